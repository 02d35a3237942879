"""Who may use the browser UI, and which requests it accepts: one ASGI middleware in front of every route.

The rules are `tunesmith serve`'s, adapted to a browser:
- Without an API key the UI trusts whoever reaches it, so it answers loopback `Host` names only (a DNS
  rebinding page sends its own name: 421), and `tunesmith ui` refuses to bind anything but loopback.
- With keys, every page needs one: `Authorization: Bearer KEY` (scripts) or the HttpOnly, SameSite=Strict
  cookie that the login form sets (browsers); anything else gets 401 with the login form.
- Every POST carries the page's CSRF token in the `X-CSRF-Token` header (htmx and ui.js send it). A
  cross-site form cannot set a header, and its `Origin` names another site: either refuses it (403).
- Bodies over the limit get 413 before they are read (uploads have their own, larger limit).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from fastapi.responses import HTMLResponse, PlainTextResponse

from tunesmith.serve.app import LOOPBACK_HOSTS

KEY_COOKIE = "tunesmith_ui_key"
CSRF_HEADER = b"x-csrf-token"
# Reachable without a key: the login form itself, and the vendored assets it loads.
OPEN_PATHS = ("/login", "/static/")
UPLOAD_PATH = "/start/upload"


@dataclass(frozen=True)
class Access:
    api_keys: tuple[str, ...]
    csrf_token: str
    max_body_bytes: int
    max_upload_bytes: int

    @classmethod
    def create(cls, api_keys: list[str], max_body_bytes: int, max_upload_bytes: int) -> Access:
        # One token per server process: it only has to be unguessable by another site, which cannot read
        # this UI's pages (same-origin policy; DNS rebinding is closed by the Host check or the key).
        return cls(tuple(api_keys), secrets.token_urlsafe(32), max_body_bytes, max_upload_bytes)

    def key_matches(self, given: str) -> bool:
        # compare_digest against every key: no early exit that would time which key matched.
        return any([hmac.compare_digest(given.encode(), k.encode()) for k in self.api_keys])


def _host_name(headers: dict[bytes, bytes]) -> str:
    host = headers.get(b"host", b"").decode("latin-1").lower()
    return host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]", 1)[0] + "]"


def _given_key(headers: dict[bytes, bytes]) -> str:
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return auth[7:]
    cookie: SimpleCookie = SimpleCookie()
    try:
        cookie.load(headers.get(b"cookie", b"").decode("latin-1"))
    except Exception:  # a malformed Cookie header is no key at all
        return ""
    morsel = cookie.get(KEY_COOKIE)
    return morsel.value if morsel else ""


def _cross_site(headers: dict[bytes, bytes]) -> bool:
    """A browser names the page a request came from: `Origin` (and `Sec-Fetch-Site`). Another site's page
    is refused even with a token, as defence in depth."""
    if headers.get(b"sec-fetch-site", b"") == b"cross-site":
        return True
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin or origin == "null":
        return bool(origin)  # `null`: a sandboxed or file:// page
    return urlsplit(origin).netloc.lower() != headers.get(b"host", b"").decode("latin-1").lower()


def refusal(access: Access, scope: dict[str, Any]) -> Any | None:
    """The response that refuses this request, or None when it may go on."""
    headers = dict(scope.get("headers") or [])
    path: str = scope["path"]
    if not access.api_keys and _host_name(headers) not in LOOPBACK_HOSTS:
        return PlainTextResponse(
            "this UI answers loopback names only (localhost, 127.0.0.1, [::1]) without an API key; "
            "start it with --api-key to serve other names",
            421,
        )
    if access.api_keys and not path.startswith(OPEN_PATHS) and not access.key_matches(_given_key(headers)):
        return HTMLResponse(login_page(access, path), 401)
    if scope.get("method") == "POST":
        token = headers.get(CSRF_HEADER, b"").decode("latin-1")
        if _cross_site(headers) or not hmac.compare_digest(token, access.csrf_token):
            return PlainTextResponse("refused: a cross-site request or a form without this UI's token", 403)
        limit = access.max_upload_bytes if path == UPLOAD_PATH else access.max_body_bytes
        length = headers.get(b"content-length", b"").decode("latin-1")
        if not length.isdigit():
            return PlainTextResponse("a POST needs a Content-Length", 411)
        if int(length) > limit:
            return PlainTextResponse(f"request body over the limit ({limit:,} bytes)", 413)
    return None


class Guard:
    """ASGI middleware: `refusal` on every HTTP request; as plain ASGI it sees a stream through to its end."""

    def __init__(self, app: Any, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (response := refusal(self.access, scope)) is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def login_page(access: Access, next_path: str) -> str:
    """The 401 body: a form that posts the key (with the CSRF token) and sets the key cookie."""
    from html import escape

    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>tunesmith: key needed</title>"
        '<link rel=stylesheet href="/static/ui.css"></head><body><main>'
        "<h1>tunesmith</h1><p>This UI needs its API key (the one given to <code>tunesmith ui --api-key</code> "
        "or <code>TUNESMITH_API_KEY</code>).</p>"
        f'<form id=login method=post action="/login" data-csrf="{access.csrf_token}" '
        f'data-next="{escape(next_path)}"><label>API key <input type=password name=key id=key '
        "autocomplete=current-password></label> <button>Sign in</button><p id=login-error class=problem></p></form>"
        '<script src="/static/ui.js"></script></main></body></html>'
    )
