"""Runs (`/`): the registry's runs, promote and roll back; a run (`/runs/ID`): its curves, files, pages."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from tunesmith.metrics_log import MetricsFileError
from tunesmith.registry import RegistryError, get_run, promote, rollback
from tunesmith.ui.runs import all_runs, curve_points, one_run, run_files, training_done
from tunesmith.ui.views import Context, field, read_form


def router(ctx: Context) -> APIRouter:
    r = APIRouter()

    @r.get("/", response_class=HTMLResponse)
    async def runs_page() -> Any:
        runs = await asyncio.to_thread(all_runs, ctx.runs_dir)
        alias_rows = sorted({(a, run.id) for run in runs for a in run.aliases})
        return ctx.page("runs.html", title="Runs", runs=runs, aliases=alias_rows, runs_dir=ctx.runs_dir)

    @r.post("/runs/{run_id}/promote")
    async def promote_run(run_id: str, request: Request) -> Any:
        form = await read_form(request)
        alias = field(form, "alias", "production").strip() or "production"
        try:
            await asyncio.to_thread(promote, ctx.runs_dir, run_id, alias, field(form, "force") == "on")
        except RegistryError as e:  # no weights, a missed target without force: the registry's reason
            return ctx.fragment("flash.html", ok=False, message=str(e))
        return ctx.fragment("flash.html", ok=True, message=f"{alias} -> {run_id}", reload=True)

    @r.post("/aliases/{alias}/rollback")
    async def rollback_alias(alias: str) -> Any:
        try:
            old, new = await asyncio.to_thread(rollback, ctx.runs_dir, alias)
        except RegistryError as e:
            return ctx.fragment("flash.html", ok=False, message=str(e))
        return ctx.fragment("flash.html", ok=True, message=f"{alias} -> {new} (was {old})", reload=True)

    @r.get("/runs/{run_id}", response_class=HTMLResponse)
    async def run_page(run_id: str) -> Any:
        view, row = await asyncio.to_thread(one_run, ctx.runs_dir, run_id)
        return ctx.page("run.html", title=view.id, run=view, files=run_files(row))

    @r.get("/runs/{run_id}/metrics.json")
    async def run_metrics(run_id: str, after: int = -1) -> Any:
        """The curve's points after step `after` (the page asks each second) and whether more will come."""
        row = await asyncio.to_thread(get_run, ctx.runs_dir, run_id)
        try:
            points = await asyncio.to_thread(curve_points, row.path, after)
        except MetricsFileError as e:  # its message names the bad line and what to do
            return JSONResponse({"error": str(e)}, 500)
        return JSONResponse({"points": points, "done": training_done(row), "stage": row.stage})

    def run_document(run_id: str, relative: str) -> Any:
        path = get_run(ctx.runs_dir, run_id).path / relative
        if not path.is_file():
            return ctx.error(404, "Not yet", f"{run_id} has no {relative} yet")
        return HTMLResponse(path.read_text(encoding="utf-8"))

    @r.get("/runs/{run_id}/report", response_class=HTMLResponse)
    async def run_report(run_id: str) -> Any:
        return await asyncio.to_thread(run_document, run_id, "report.html")

    @r.get("/runs/{run_id}/preflight", response_class=HTMLResponse)
    async def run_preflight(run_id: str) -> Any:
        return await asyncio.to_thread(run_document, run_id, "data/preflight.html")

    return r
