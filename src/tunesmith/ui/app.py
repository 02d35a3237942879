"""`tunesmith ui`: the registry, its runs, a new run, the playground, review and compare in a browser.

Server-rendered pages (Jinja2) with htmx for the parts that change in place, and a small script of our own
(static/ui.js) for uploads, live curves (uPlot) and streamed answers; every asset is in the package. The
app only calls what the CLI calls: the registry for promote/rollback, `tunesmith init`'s config writer and
loader, `tunesmith run` as a subprocess, the serve engine, review import, the comparison page. Each page's
routes are in tunesmith.ui.pages; this module puts them behind the access rules (tunesmith.ui.security).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from tunesmith.registry import RegistryError
from tunesmith.serve.app import Settings
from tunesmith.ui import jobs
from tunesmith.ui.pages import compare, playground, review, runs, start
from tunesmith.ui.playground import Playground
from tunesmith.ui.security import KEY_COOKIE, Access, Guard
from tunesmith.ui.views import Context, field, read_form, templates

log = logging.getLogger("tunesmith.ui")
STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 512 << 20
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


def create_app(config: UIConfig) -> FastAPI:
    access = Access.create(config.settings.api_keys, config.settings.max_body_bytes, MAX_UPLOAD_BYTES)
    ctx = Context(config.runs_dir, config.settings, access, templates(), Playground(config.settings))
    app = FastAPI(title="tunesmith ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, access=access)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_security_headers(app)
    _add_error_pages(app, ctx)
    app.post("/login")(_login(access))
    for page in (runs, start, playground, review, compare):
        app.include_router(page.router(ctx))
    app.state.access = access
    return app


def _add_security_headers(app: FastAPI) -> None:
    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response


def _add_error_pages(app: FastAPI, ctx: Context) -> None:
    @app.exception_handler(RegistryError)
    async def unknown_run(request: Request, e: RegistryError) -> Any:
        return ctx.error(404, "Not found", str(e))

    @app.exception_handler(jobs.StartError)
    async def start_error(request: Request, e: jobs.StartError) -> Any:
        return ctx.error(400, "Cannot start", str(e))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> Any:
        # A traceback is for the server log; the page says what failed, not how.
        log.exception("ui: %s %s failed", request.method, request.url.path)
        return ctx.error(500, "Error", "the request failed (the server log has the details)")


def _login(access: Access) -> Any:
    async def login(request: Request) -> Any:
        """The sign-in form's key, checked, kept in an HttpOnly, SameSite=Strict cookie."""
        key = field(await read_form(request), "key")
        if not access.key_matches(key):
            return PlainTextResponse("wrong key", 401)
        response = Response(status_code=204)
        response.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict", path="/")
        return response

    return login
