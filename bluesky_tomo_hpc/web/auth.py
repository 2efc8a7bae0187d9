"""The web page asks for the same API key as Tiled: in the ``Authorization: Apikey KEY`` header,
an ``api_key`` query parameter, or once in the login form, which sets a session cookie.

The cookie holds an HMAC of the key (never the key), HttpOnly and SameSite=Strict, so other sites
cannot ride on it to retry or cancel jobs.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "btomo_session"
#: paths (below the app's mount point) that need no key: the login form and its style sheet
PUBLIC = ("/login", "/static/")


def session_token(api_key: str) -> str:
    return hmac.new(api_key.encode(), b"bluesky-tomo-hpc web session", hashlib.sha256).hexdigest()


def key_matches(given: str | None, api_key: str) -> bool:
    return bool(given) and hmac.compare_digest(str(given).encode(), api_key.encode())


def presented_key(conn: HTTPConnection) -> str | None:
    """The key this request carries in its header or query (not the cookie)."""
    auth = conn.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("apikey", "bearer") and value:
        return value.strip()
    return conn.query_params.get("api_key")


def is_authorised(conn: HTTPConnection, api_key: str) -> bool:
    if key_matches(presented_key(conn), api_key):
        return True
    cookie = conn.cookies.get(COOKIE)
    return bool(cookie) and hmac.compare_digest(cookie, session_token(api_key))


def set_session(response: Any, api_key: str, path: str) -> None:
    response.set_cookie(COOKIE, session_token(api_key), httponly=True, samesite="strict", path=path or "/")


class RequireKey:
    """ASGI middleware: everything but :data:`PUBLIC` needs the key. A page is redirected to the
    login form; an API call gets 401 with a one-line JSON reason."""

    def __init__(self, app: ASGIApp, api_key: str):
        if not api_key:
            raise ValueError("the web page needs an API key (the same one Tiled uses)")
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        local = path[len(root):] if root and path.startswith(root) else path
        if local.startswith(PUBLIC) or is_authorised(conn, self.api_key):
            await self.app(scope, receive, send)
            return
        if local in ("", "/"):
            response: Any = RedirectResponse(f"{root}/login", status_code=303)
        else:
            response = JSONResponse({"error": "API key required: log in on the page, or send "
                                              "'Authorization: Apikey KEY'"}, status_code=401)
        await response(scope, receive, send)
