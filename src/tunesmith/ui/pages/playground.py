"""Playground (`/playground`): one prompt, the base and tuned runs side by side, each answer streamed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, StreamingResponse

from tunesmith.registry import RegistryError
from tunesmith.serve.engine import ServeError
from tunesmith.ui.playground import Ask, PlaygroundError
from tunesmith.ui.runs import all_runs
from tunesmith.ui.views import Context, RunsQuery


def _ask(body: Any) -> Ask:
    """The JSON ui.js posts for one column; KeyError, TypeError or ValueError for anything else."""
    return Ask(
        runs=tuple(str(r) for r in body["runs"]),
        model=str(body["model"]),
        prompt=str(body["prompt"]),
        max_tokens=int(body.get("max_tokens", 64)),
        temperature=float(body.get("temperature", 0.0)),
    )


def router(ctx: Context) -> APIRouter:
    r = APIRouter()

    @r.get("/playground", response_class=HTMLResponse)
    async def playground_page(run: RunsQuery = None) -> Any:
        runs = [v for v in await asyncio.to_thread(all_runs, ctx.runs_dir) if v.trained]
        chosen = set(run or [])
        return ctx.page(
            "playground.html", title="Playground", runs=runs, chosen=chosen, settings=ctx.settings
        )

    @r.post("/playground/generate")
    async def generate(request: Request) -> Any:
        try:
            ask = _ask(json.loads(await request.body()))
            ctx.playground.check(ask)
            dirs = await asyncio.to_thread(ctx.run_paths, ask.runs)
            engine = await asyncio.to_thread(ctx.playground.engine, dirs)
            stream = ctx.playground.stream(engine, ask)
        except (ValueError, KeyError, TypeError) as e:
            return PlainTextResponse(f"bad request: {e}", 400)
        except (PlaygroundError, ServeError, RegistryError) as e:
            return PlainTextResponse(str(e), 400)
        return StreamingResponse(stream, media_type="text/plain; charset=utf-8")

    return r
