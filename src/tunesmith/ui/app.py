"""`tunesmith ui`: the registry, its runs, a new run, the playground, review and compare in a browser.

Server-rendered pages (Jinja2) with htmx for the parts that change in place, a small script of our own
(static/ui.js) for uploads, live curves (uPlot) and streamed answers. Every asset is in the package. The
app only calls what the CLI calls: the registry for promote/rollback, `tunesmith init`'s config writer and
loader, `tunesmith run` as a subprocess, the serve engine, review import, the comparison page.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape

from tunesmith.metrics_log import MetricsFileError
from tunesmith.registry import RegistryError, get_run, promote, rollback
from tunesmith.serve.app import Settings
from tunesmith.serve.engine import ServeError
from tunesmith.ui import jobs
from tunesmith.ui.playground import BASE, Ask, Playground, PlaygroundError
from tunesmith.ui.runs import all_runs, curve_points, one_run, run_files, training_done
from tunesmith.ui.security import KEY_COOKIE, Access, Guard

log = logging.getLogger("tunesmith.ui")
STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 512 << 20
# `?run=A&run=B`: the runs a page is about, by id.
RunsQuery = Annotated[list[str] | None, Query()]
# Sent with every response: our pages load only their own scripts, styles and images (and inline PNGs of
# the report), may be framed only by themselves, and never send a Referer elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class UIConfig:
    runs_dir: Path
    settings: Settings  # serve's limits (body size, concurrency, deadline, max tokens) and API keys


def _templates() -> Environment:
    env = Environment(loader=PackageLoader("tunesmith.ui", "templates"), autoescape=select_autoescape())
    env.filters["urlquote"] = lambda s: quote(str(s), safe="")
    return env


async def _form(request: Request) -> dict[str, list[str]]:
    """An urlencoded body (what htmx posts), without python-multipart."""
    return parse_qs((await request.body()).decode("utf-8", errors="replace"), keep_blank_values=True)


def _one(form: dict[str, list[str]], name: str, default: str = "") -> str:
    return (form.get(name) or [default])[0]


def run_paths(runs_dir: Path, run_ids: Sequence[str]) -> list[Path]:
    """Run folders by id, from the registry (a request names runs, never paths)."""
    return [get_run(runs_dir, r).path for r in run_ids]


def create_app(config: UIConfig) -> FastAPI:
    runs_dir = config.runs_dir
    settings = config.settings
    access = Access.create(settings.api_keys, settings.max_body_bytes, MAX_UPLOAD_BYTES)
    env = _templates()
    playground = Playground(settings)
    app = FastAPI(title="tunesmith ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, access=access)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(csrf=access.csrf_token, keyed=bool(access.api_keys), **context)
        return HTMLResponse(html, status)

    def fragment(name: str, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(csrf=access.csrf_token, **context))

    @app.exception_handler(RegistryError)
    async def unknown_run(request: Request, e: RegistryError) -> Any:
        return page("error.html", 404, title="Not found", message=str(e))

    @app.exception_handler(jobs.StartError)
    async def start_error(request: Request, e: jobs.StartError) -> Any:
        return page("error.html", 400, title="Cannot start", message=str(e))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> Any:
        # A traceback is for the server log; the page says what failed, not how.
        log.exception("ui: %s %s failed", request.method, request.url.path)
        return page(
            "error.html", 500, title="Error", message="the request failed (the server log has the details)"
        )

    # ------------------------------------------------------------------------------------------ sign-in
    @app.post("/login")
    async def login(request: Request) -> Any:
        key = _one(await _form(request), "key")
        if not access.key_matches(key):
            return PlainTextResponse("wrong key", 401)
        response = Response(status_code=204)
        response.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict", path="/")
        return response

    # ----------------------------------------------------------------------------------------- runs
    @app.get("/", response_class=HTMLResponse)
    async def runs_page() -> Any:
        runs = await asyncio.to_thread(all_runs, runs_dir)
        alias_rows = sorted({(a, r.id) for r in runs for a in r.aliases})
        return page("runs.html", title="Runs", runs=runs, aliases=alias_rows, runs_dir=runs_dir)

    @app.post("/runs/{run_id}/promote")
    async def promote_run(run_id: str, request: Request) -> Any:
        form = await _form(request)
        alias = _one(form, "alias", "production").strip() or "production"
        try:
            await asyncio.to_thread(promote, runs_dir, run_id, alias, _one(form, "force") == "on")
        except RegistryError as e:
            return fragment("flash.html", ok=False, message=str(e))
        return fragment("flash.html", ok=True, message=f"{alias} -> {run_id}", reload=True)

    @app.post("/aliases/{alias}/rollback")
    async def rollback_alias(alias: str) -> Any:
        try:
            old, new = await asyncio.to_thread(rollback, runs_dir, alias)
        except RegistryError as e:
            return fragment("flash.html", ok=False, message=str(e))
        return fragment("flash.html", ok=True, message=f"{alias} -> {new} (was {old})", reload=True)

    # ------------------------------------------------------------------------------------------ a run
    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    async def run_page(run_id: str) -> Any:
        view, row = await asyncio.to_thread(one_run, runs_dir, run_id)
        return page("run.html", title=view.id, run=view, files=run_files(row))

    @app.get("/runs/{run_id}/metrics.json")
    async def run_metrics(run_id: str, after: int = -1) -> Any:
        row = await asyncio.to_thread(get_run, runs_dir, run_id)
        try:
            points = await asyncio.to_thread(curve_points, row.path, after)
        except MetricsFileError as e:  # its message names the bad line and what to do
            return JSONResponse({"error": str(e)}, 500)
        return JSONResponse({"points": points, "done": training_done(row), "stage": row.stage})

    def run_html(run_id: str, relative: str) -> Any:
        path = get_run(runs_dir, run_id).path / relative
        if not path.is_file():
            return page("error.html", 404, title="Not yet", message=f"{run_id} has no {relative} yet")
        return HTMLResponse(path.read_text(encoding="utf-8"))

    @app.get("/runs/{run_id}/report", response_class=HTMLResponse)
    async def run_report(run_id: str) -> Any:
        return await asyncio.to_thread(run_html, run_id, "report.html")

    @app.get("/runs/{run_id}/preflight", response_class=HTMLResponse)
    async def run_preflight(run_id: str) -> Any:
        return await asyncio.to_thread(run_html, run_id, "data/preflight.html")

    # ------------------------------------------------------------------------------------ start a run
    @app.get("/start", response_class=HTMLResponse)
    async def start_page() -> Any:
        return page("start.html", title="Start a run", default_model=jobs.DEFAULT_MODEL)

    async def open_draft(make: Any, model: str) -> str:
        draft, data = await asyncio.to_thread(make)
        await asyncio.to_thread(jobs.write_initial_config, draft, data, model, runs_dir)
        return f"/start/{draft.id}"

    @app.post("/start/upload")
    async def upload(request: Request, name: str, model: str = jobs.DEFAULT_MODEL) -> Any:
        content = await request.body()
        try:
            url = await open_draft(lambda: jobs.draft_from_upload(runs_dir, name, content), model)
        except jobs.StartError as e:
            return JSONResponse({"error": str(e)}, 400)
        return JSONResponse({"url": url})

    @app.post("/start/pick")
    async def pick(request: Request) -> Any:
        form = await _form(request)
        model = _one(form, "model", jobs.DEFAULT_MODEL).strip() or jobs.DEFAULT_MODEL
        try:
            url = await open_draft(lambda: jobs.draft_from_path(runs_dir, _one(form, "path")), model)
        except jobs.StartError as e:
            return fragment("flash.html", ok=False, message=str(e))
        return Response(status_code=204, headers={"HX-Redirect": url})

    @app.get("/start/{draft_id}", response_class=HTMLResponse)
    async def draft_page(draft_id: str) -> Any:
        draft = jobs.get_draft(runs_dir, draft_id)
        text = draft.config.read_text(encoding="utf-8")
        check = await asyncio.to_thread(jobs.check_config, draft, text)
        state = jobs.job_state(draft)
        return page("draft.html", title="Start a run", draft=draft, text=text, check=check, job=state)

    @app.post("/start/{draft_id}/check", response_class=HTMLResponse)
    async def draft_check(draft_id: str, request: Request) -> Any:
        draft = jobs.get_draft(runs_dir, draft_id)
        check = await asyncio.to_thread(jobs.check_config, draft, _one(await _form(request), "config"))
        return fragment("check.html", check=check)

    @app.post("/start/{draft_id}/plan", response_class=HTMLResponse)
    async def draft_plan(draft_id: str, request: Request) -> Any:
        draft = jobs.get_draft(runs_dir, draft_id)
        check = await asyncio.to_thread(jobs.save_config, draft, _one(await _form(request), "config"))
        if not check.ok:
            return fragment("check.html", check=check)
        try:
            text = await asyncio.to_thread(jobs.plan_text, draft)
        except jobs.StartError as e:
            return fragment("flash.html", ok=False, message=str(e))
        return fragment("plan.html", plan=text)

    @app.post("/start/{draft_id}/run", response_class=HTMLResponse)
    async def draft_run(draft_id: str, request: Request) -> Any:
        draft = jobs.get_draft(runs_dir, draft_id)
        check = await asyncio.to_thread(jobs.save_config, draft, _one(await _form(request), "config"))
        if not check.ok:  # the same refusal as `tunesmith run`: nothing starts
            return fragment("check.html", check=check)
        try:
            jobs.start_run(draft)
        except jobs.StartError as e:
            return fragment("flash.html", ok=False, message=str(e))
        return fragment("job.html", draft=draft, job=jobs.job_state(draft))

    @app.get("/start/{draft_id}/job", response_class=HTMLResponse)
    async def draft_job(draft_id: str) -> Any:
        draft = jobs.get_draft(runs_dir, draft_id)
        return fragment("job.html", draft=draft, job=jobs.job_state(draft))

    # ------------------------------------------------------------------------------------- playground
    @app.get("/playground", response_class=HTMLResponse)
    async def playground_page(run: RunsQuery = None) -> Any:
        runs = [r for r in await asyncio.to_thread(all_runs, runs_dir) if r.trained]
        return page(
            "playground.html", title="Playground", runs=runs, chosen=set(run or []), settings=settings
        )

    @app.post("/playground/generate")
    async def generate(request: Request) -> Any:
        try:
            body = json.loads(await request.body())
            ask = Ask(
                runs=tuple(str(r) for r in body["runs"]),
                model=str(body["model"]),
                prompt=str(body["prompt"]),
                max_tokens=int(body.get("max_tokens", 64)),
                temperature=float(body.get("temperature", 0.0)),
            )
            playground.check(ask)
            dirs = await asyncio.to_thread(run_paths, runs_dir, ask.runs)
            engine = await asyncio.to_thread(playground.engine, dirs)
            stream = playground.stream(engine, ask)
        except (ValueError, KeyError, TypeError) as e:
            return PlainTextResponse(f"bad request: {e}", 400)
        except (PlaygroundError, ServeError, RegistryError) as e:
            return PlainTextResponse(str(e), 400)
        return StreamingResponse(stream, media_type="text/plain; charset=utf-8")

    # ----------------------------------------------------------------------------------------- review
    @app.get("/runs/{run_id}/review", response_class=HTMLResponse)
    async def review_page(run_id: str) -> Any:
        from tunesmith.ui.review import review_rows

        row = await asyncio.to_thread(get_run, runs_dir, run_id)
        if not (row.path / "eval" / "predictions.jsonl").is_file():
            return page("error.html", 404, title="Not yet", message=f"{run_id} has no test outputs yet")
        rows = await asyncio.to_thread(review_rows, row.path)
        return page("review.html", title=f"Review {run_id}", run_id=run_id, rows=rows)

    @app.post("/runs/{run_id}/review", response_class=HTMLResponse)
    async def review_save(run_id: str, request: Request) -> Any:
        from tunesmith.eval.review import ReviewError
        from tunesmith.ui.review import (
            name_rows,
            offer_corrections,
            review_rows,
            save_review,
            verdicts_from_form,
        )

        row = await asyncio.to_thread(get_run, runs_dir, run_id)
        form = await _form(request)
        rows = await asyncio.to_thread(review_rows, row.path)
        verdicts = verdicts_from_form(form, rows)
        try:
            summary = await asyncio.to_thread(save_review, row.path, rows, verdicts)
        except ReviewError as e:
            problems = name_rows(e.problems, rows)
            return fragment("review_result.html", problems=problems, summary=None, run_id=run_id)
        stored = 0
        if _one(form, "to_feedback") == "on":
            stored = await asyncio.to_thread(offer_corrections, row.path, settings.serve_dir, rows, verdicts)
        return fragment("review_result.html", problems=[], summary=summary, stored=stored, run_id=run_id)

    # ---------------------------------------------------------------------------------------- compare
    @app.get("/compare", response_class=HTMLResponse)
    async def compare_page(run: RunsQuery = None) -> Any:
        from tunesmith.eval.report import iterations_summary, load_evaluated

        chosen = list(run or [])
        runs = await asyncio.to_thread(all_runs, runs_dir)
        summary: list[str] = []
        problem = ""
        if chosen:
            try:
                dirs = await asyncio.to_thread(run_paths, runs_dir, chosen)
                summary = await asyncio.to_thread(lambda: iterations_summary(load_evaluated(dirs)))
            except FileNotFoundError as e:
                problem = str(e)
        return page(
            "compare.html", title="Compare", runs=runs, chosen=chosen, summary=summary, problem=problem
        )

    @app.get("/compare/page", response_class=HTMLResponse)
    async def compare_document(run: RunsQuery = None) -> Any:
        from tunesmith.eval.report import build_comparison

        if not run:
            return page("error.html", 404, title="Cannot compare", message="pick runs to compare")
        dirs = await asyncio.to_thread(run_paths, runs_dir, run)
        out = runs_dir / "ui" / "comparison.html"
        try:
            built = await asyncio.to_thread(build_comparison, dirs, out)
        except FileNotFoundError as e:
            return page("error.html", 404, title="Cannot compare", message=str(e))
        return HTMLResponse(built.read_text(encoding="utf-8"))

    app.state.access = access
    app.state.base_name = BASE
    return app
