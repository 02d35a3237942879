"""Compare (`/compare`): the `tunesmith compare` page across the selected runs."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from tunesmith.eval.report import build_comparison, iterations_summary, load_evaluated
from tunesmith.ui.runs import all_runs
from tunesmith.ui.views import Context, RunsQuery


def router(ctx: Context) -> APIRouter:
    r = APIRouter()

    @r.get("/compare", response_class=HTMLResponse)
    async def compare_page(run: RunsQuery = None) -> Any:
        chosen = list(run or [])
        runs = await asyncio.to_thread(all_runs, ctx.runs_dir)
        summary: list[str] = []
        problem = ""
        if chosen:
            try:
                dirs = await asyncio.to_thread(ctx.run_paths, chosen)
                summary = await asyncio.to_thread(lambda: iterations_summary(load_evaluated(dirs)))
            except FileNotFoundError as e:  # a run not evaluated yet: eval's own message
                problem = str(e)
        return ctx.page(
            "compare.html", title="Compare", runs=runs, chosen=chosen, summary=summary, problem=problem
        )

    @r.get("/compare/page", response_class=HTMLResponse)
    async def compare_document(run: RunsQuery = None) -> Any:
        if not run:
            return ctx.error(404, "Cannot compare", "pick runs to compare")
        dirs = await asyncio.to_thread(ctx.run_paths, run)
        # One file per selection: two tabs comparing different runs never read each other's page.
        name = hashlib.sha256("\n".join(run).encode()).hexdigest()[:16]
        try:
            built = await asyncio.to_thread(
                build_comparison, dirs, ctx.runs_dir / "ui" / f"compare-{name}.html"
            )
        except FileNotFoundError as e:
            return ctx.error(404, "Cannot compare", str(e))
        return HTMLResponse(built.read_text(encoding="utf-8"))

    return r
