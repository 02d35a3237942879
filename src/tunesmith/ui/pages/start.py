"""Start a run (`/start`): a data file -> the init config, checked as it is edited -> plan -> `tunesmith run`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from tunesmith.ui import jobs
from tunesmith.ui.views import Context, field, read_form


def router(ctx: Context) -> APIRouter:
    r = APIRouter()

    @r.get("/start", response_class=HTMLResponse)
    async def start_page() -> Any:
        return ctx.page("start.html", title="Start a run", default_model=jobs.DEFAULT_MODEL)

    async def open_draft(make: Callable[[], tuple[jobs.Draft, Path]], model: str) -> str:
        """A new draft from the data file, its config written by init; the draft page's address."""
        draft, data = await asyncio.to_thread(make)
        await asyncio.to_thread(jobs.write_initial_config, draft, data, model, ctx.runs_dir)
        return f"/start/{draft.id}"

    @r.post("/start/upload")
    async def upload(request: Request, name: str, model: str = jobs.DEFAULT_MODEL) -> Any:
        """The file as the request body (ui.js sends it so; no multipart parser needed)."""
        content = await request.body()
        try:
            url = await open_draft(lambda: jobs.draft_from_upload(ctx.runs_dir, name, content), model)
        except jobs.StartError as e:
            return JSONResponse({"error": str(e)}, 400)
        return JSONResponse({"url": url})

    @r.post("/start/pick")
    async def pick(request: Request) -> Any:
        form = await read_form(request)
        model = field(form, "model", jobs.DEFAULT_MODEL).strip() or jobs.DEFAULT_MODEL
        try:
            url = await open_draft(lambda: jobs.draft_from_path(ctx.runs_dir, field(form, "path")), model)
        except jobs.StartError as e:
            return ctx.fragment("flash.html", ok=False, message=str(e))
        return Response(status_code=204, headers={"HX-Redirect": url})

    @r.get("/start/{draft_id}", response_class=HTMLResponse)
    async def draft_page(draft_id: str) -> Any:
        draft = jobs.get_draft(ctx.runs_dir, draft_id)
        text = draft.config.read_text(encoding="utf-8")
        check = await asyncio.to_thread(jobs.check_config, draft, text)
        state = jobs.job_state(draft)
        return ctx.page("draft.html", title="Start a run", draft=draft, text=text, check=check, job=state)

    @r.post("/start/{draft_id}/check", response_class=HTMLResponse)
    async def draft_check(draft_id: str, request: Request) -> Any:
        draft = jobs.get_draft(ctx.runs_dir, draft_id)
        text = field(await read_form(request), "config")
        return ctx.fragment("check.html", check=await asyncio.to_thread(jobs.check_config, draft, text))

    @r.post("/start/{draft_id}/plan", response_class=HTMLResponse)
    async def draft_plan(draft_id: str, request: Request) -> Any:
        draft = jobs.get_draft(ctx.runs_dir, draft_id)
        check = await asyncio.to_thread(jobs.save_config, draft, field(await read_form(request), "config"))
        if not check.ok:
            return ctx.fragment("check.html", check=check)
        try:
            text = await asyncio.to_thread(jobs.plan_text, draft)
        except jobs.StartError as e:
            return ctx.fragment("flash.html", ok=False, message=str(e))
        return ctx.fragment("plan.html", plan=text)

    @r.post("/start/{draft_id}/run", response_class=HTMLResponse)
    async def draft_run(draft_id: str, request: Request) -> Any:
        draft = jobs.get_draft(ctx.runs_dir, draft_id)
        check = await asyncio.to_thread(jobs.save_config, draft, field(await read_form(request), "config"))
        if not check.ok:  # the same refusal as `tunesmith run`: nothing starts
            return ctx.fragment("check.html", check=check)
        try:
            jobs.start_run(draft)
        except jobs.StartError as e:
            return ctx.fragment("flash.html", ok=False, message=str(e))
        return ctx.fragment("job.html", draft=draft, job=jobs.job_state(draft))

    @r.get("/start/{draft_id}/job", response_class=HTMLResponse)
    async def draft_job(draft_id: str) -> Any:
        draft = jobs.get_draft(ctx.runs_dir, draft_id)
        return ctx.fragment("job.html", draft=draft, job=jobs.job_state(draft))

    return r
