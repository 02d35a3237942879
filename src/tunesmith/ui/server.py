"""`tunesmith ui`: check the address against the keys, build the app, run uvicorn."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from tunesmith.serve.app import Settings
from tunesmith.ui.app import UIConfig, create_app


class UIStartError(Exception):
    """The UI refuses to start as asked (a non-loopback address without a key), with the reason."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_ui(runs_dir: Path, settings: Settings, host: str, port: int) -> None:
    import uvicorn

    if not is_loopback(host) and not settings.api_keys:
        raise UIStartError(
            f"refusing to serve the UI on {host} without an API key: set --api-key or TUNESMITH_API_KEY"
        )
    app = create_app(UIConfig(runs_dir=runs_dir, settings=settings))
    shown = f"[{host}]" if ":" in host else host
    print(f"tunesmith ui for {runs_dir} on http://{shown}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
