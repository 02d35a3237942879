"""Review (`/runs/ID/review`): the blind A/B sheet in the browser, saved as `review import` saves it."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from tunesmith.eval.review import ReviewError
from tunesmith.registry import get_run
from tunesmith.ui.review import name_rows, offer_corrections, review_rows, save_review, verdicts_from_form
from tunesmith.ui.views import Context, field, read_form


def router(ctx: Context) -> APIRouter:
    r = APIRouter()

    @r.get("/runs/{run_id}/review", response_class=HTMLResponse)
    async def review_page(run_id: str) -> Any:
        row = await asyncio.to_thread(get_run, ctx.runs_dir, run_id)
        if not (row.path / "eval" / "predictions.jsonl").is_file():
            return ctx.error(404, "Not yet", f"{run_id} has no test outputs yet")
        rows = await asyncio.to_thread(review_rows, row.path)
        return ctx.page("review.html", title=f"Review {run_id}", run_id=run_id, rows=rows)

    @r.post("/runs/{run_id}/review", response_class=HTMLResponse)
    async def review_save(run_id: str, request: Request) -> Any:
        row = await asyncio.to_thread(get_run, ctx.runs_dir, run_id)
        form = await read_form(request)
        rows = await asyncio.to_thread(review_rows, row.path)
        verdicts = verdicts_from_form(form, rows)
        try:
            summary = await asyncio.to_thread(save_review, row.path, rows, verdicts)
        except ReviewError as e:
            problems = name_rows(e.problems, rows)
            return ctx.fragment("review_result.html", problems=problems, summary=None, run_id=run_id)
        stored = 0
        if field(form, "to_feedback") == "on":
            serve_dir = ctx.settings.serve_dir
            stored = await asyncio.to_thread(offer_corrections, row.path, serve_dir, rows, verdicts)
        return ctx.fragment("review_result.html", problems=[], summary=summary, stored=stored, run_id=run_id)

    return r
