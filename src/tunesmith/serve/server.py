"""`tunesmith serve`: resolve what to serve from the registry, load it, run uvicorn."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from tunesmith.serve.app import Settings, create_app
from tunesmith.serve.engine import Engine, ServeError


def run_dir_of(runs_dir: str | Path, ref: str) -> Path:
    """A run by id (looked up in the registry) or by its folder."""
    from tunesmith.registry import get_run

    p = Path(ref)
    if (p / "manifest.json").is_file():
        return p.resolve()
    return get_run(runs_dir, ref).path


def resolve_served(
    runs_dir: str | Path, runs: list[str], alias: str | None
) -> tuple[list[Path], dict[str, str]]:
    """Run folders to load and alias -> run id. `--alias production` serves the run it points at now, under
    both its id and the alias name."""
    from tunesmith.registry import resolve_alias

    dirs = [run_dir_of(runs_dir, r) for r in runs]
    aliases: dict[str, str] = {}
    if alias:
        run_id = resolve_alias(runs_dir, alias)
        aliases[alias] = run_id
        if run_id not in {d.name for d in dirs}:
            dirs.append(run_dir_of(runs_dir, run_id))
    if not dirs:
        raise ServeError("nothing to serve: give run ids or --alias NAME")
    return dirs, aliases


def api_keys(given: list[str] | None, env: str | None) -> list[str]:
    """The accepted API keys: the `--api-key` values, else `TUNESMITH_API_KEY` read as one string, several
    keys separated by commas. Never split on whitespace: each word of a passphrase would become a key."""
    keys = [k for k in (given or []) if k]
    if not keys and env:
        keys = [k.strip() for k in env.split(",") if k.strip()]
    return keys


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build(runs_dir: str | Path, runs: list[str], alias: str | None, settings: Settings) -> Any:
    dirs, aliases = resolve_served(runs_dir, runs, alias)
    return create_app(Engine(dirs, aliases), settings)


def serve(
    runs_dir: str | Path,
    runs: list[str],
    alias: str | None,
    settings: Settings,
    host: str,
    port: int,
    allow_no_key: bool = False,
) -> None:
    import uvicorn

    if not _loopback(host) and not settings.api_keys and not allow_no_key:
        raise ServeError(
            f"refusing to serve on {host} without an API key: set --api-key or TUNESMITH_API_KEY "
            "(or pass --insecure-no-key on a network you trust)"
        )
    app = build(runs_dir, runs, alias, settings)
    names = ", ".join(sorted(app.state.engine.names))
    print(f"serving {names} on http://{host}:{port}/v1", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
