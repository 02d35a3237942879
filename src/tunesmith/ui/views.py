"""What every page module shares: the app's context (runs folder, limits, access rules, templates, the
playground's engine) and the small helpers that render a page or read a form."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import Query, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from tunesmith.registry import get_run
from tunesmith.serve.app import Settings
from tunesmith.ui.playground import Playground
from tunesmith.ui.security import Access

# `?run=A&run=B`: the runs a page is about, by id.
RunsQuery = Annotated[list[str] | None, Query()]


def templates() -> Environment:
    env = Environment(loader=PackageLoader("tunesmith.ui", "templates"), autoescape=select_autoescape())
    env.filters["urlquote"] = lambda s: quote(str(s), safe="")
    return env


@dataclass(frozen=True)
class Context:
    runs_dir: Path
    settings: Settings  # serve's limits (body size, concurrency, deadline, max tokens) and API keys
    access: Access
    env: Environment
    playground: Playground

    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        """A whole page (base.html around it), with the CSRF token its forms send."""
        html = self.env.get_template(name).render(csrf=self.access.csrf_token, **context)
        return HTMLResponse(html, status)

    def fragment(self, name: str, **context: Any) -> HTMLResponse:
        """A part of a page, for htmx to swap in."""
        return HTMLResponse(self.env.get_template(name).render(csrf=self.access.csrf_token, **context))

    def error(self, status: int, title: str, message: str) -> HTMLResponse:
        return self.page("error.html", status, title=title, message=message)

    def run_paths(self, run_ids: Sequence[str]) -> list[Path]:
        """Run folders by id, from the registry (a request names runs, never paths)."""
        return [get_run(self.runs_dir, r).path for r in run_ids]


async def read_form(request: Request) -> dict[str, list[str]]:
    """An urlencoded body (what htmx posts), without python-multipart."""
    return parse_qs((await request.body()).decode("utf-8", errors="replace"), keep_blank_values=True)


def field(form: dict[str, list[str]], name: str, default: str = "") -> str:
    return (form.get(name) or [default])[0]
