"""The web page asks for the same API key as Tiled: in the ``Authorization: Apikey KEY`` header,
an ``api_key`` query parameter, or once in the login form, which starts a session.

Sessions live on the server (:class:`Sessions`): the cookie holds a random token (never the key
nor anything derived from it), HttpOnly and SameSite=Strict, so other sites cannot ride on it
to retry or cancel jobs; logging out ends the session on the server, so a copied cookie stops
working at once; a session also ends after :data:`SESSION_S` and when the server restarts.

Wrong keys are throttled (:class:`~bluesky_tomo_hpc.untrusted.key_throttle.LoginThrottle`, the same
rule as Tiled's own API behind it): after a few wrong keys from one client, every further try (right
or wrong) is answered 429 with ``Retry-After`` until a delay that doubles with each failure has
passed, so guessing a key takes years instead of minutes. Redirects are relative
(``Location: login``), so a forged ``Host`` header never sends a browser elsewhere.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..untrusted.key_throttle import LoginThrottle, client_of, presented_key, too_many

__all__ = ["COOKIE", "Gate", "LoginThrottle", "RequireKey", "Sessions", "client_of", "is_authorised",
           "key_matches", "presented_key", "too_many"]

COOKIE = "btomo_session"
#: paths (below the app's mount point) that need no key: the login form and its style sheet
PUBLIC = ("/login", "/static/")
#: a session's longest life (a beamtime shift and a half)
SESSION_S = 12 * 3600.0
#: sessions kept at once; the oldest ends first beyond it (bounded memory)
MAX_SESSIONS = 256


def key_matches(given: str | None, api_key: str) -> bool:
    return bool(given) and hmac.compare_digest(str(given).encode(), api_key.encode())


class Sessions:
    """Server-side sessions: random tokens, each valid until it expires or is ended."""

    def __init__(self, lifetime_s: float = SESSION_S, max_sessions: int = MAX_SESSIONS):
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def start(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._expiry[token] = time.monotonic() + self.lifetime_s
            while len(self._expiry) > self.max_sessions:
                self._expiry.popitem(last=False)
        return token

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self._lock:
            expiry = self._expiry.get(token)
            if expiry is None:
                return False
            if time.monotonic() >= expiry:
                del self._expiry[token]
                return False
            return True

    def end(self, token: str | None) -> None:
        with self._lock:
            self._expiry.pop(token or "", None)


class Gate:
    """The key, the sessions and the throttle of one web app, shared by the middleware and the
    login and logout routes."""

    def __init__(self, api_key: str, sessions: Sessions | None = None, throttle: LoginThrottle | None = None):
        if not api_key:
            raise ValueError("the web page needs an API key (the same one Tiled uses)")
        self.api_key = api_key
        self.sessions = sessions or Sessions()
        self.throttle = throttle or LoginThrottle()

    def check_key(self, conn: HTTPConnection, given: str) -> bool | float:
        """True (right key), False (wrong, counted) or the seconds still to wait (not looked at)."""
        client = client_of(conn)
        wait = self.throttle.wait_s(client)
        if wait > 0:
            return wait
        if key_matches(given, self.api_key):
            self.throttle.succeeded(client)
            return True
        self.throttle.failed(client)
        return False

    def has_session(self, conn: HTTPConnection) -> bool:
        return self.sessions.valid(conn.cookies.get(COOKIE))

    def start_session(self, response: Any, path: str) -> None:
        response.set_cookie(COOKIE, self.sessions.start(), httponly=True, samesite="strict", path=path or "/",
                            max_age=int(self.sessions.lifetime_s))

    def end_session(self, conn: HTTPConnection, response: Any, path: str) -> None:
        self.sessions.end(conn.cookies.get(COOKIE))
        response.delete_cookie(COOKIE, path=path or "/", httponly=True, samesite="strict")


def is_authorised(conn: HTTPConnection, gate: Gate) -> bool:
    """A session, or the right key in the header or query (never counted as a failure here)."""
    return gate.has_session(conn) or key_matches(presented_key(conn), gate.api_key)


class RequireKey:
    """ASGI middleware: everything but :data:`PUBLIC` needs a session or the key. A page is
    redirected to the login form; an API call gets 401 (429 while throttled) with a one-line
    JSON reason."""

    def __init__(self, app: ASGIApp, gate: Gate):
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        local = path[len(root):] if root and path.startswith(root) else path
        if local.startswith(PUBLIC) or self.gate.has_session(conn):
            await self.app(scope, receive, send)
            return
        given = presented_key(conn)
        verdict = self.gate.check_key(conn, given) if given else False
        if verdict is True:
            await self.app(scope, receive, send)
            return
        response: Any
        if not isinstance(verdict, bool):
            response = too_many(verdict)
        elif local in ("", "/"):
            # relative: "/web/" -> "login"; "/web" -> "web/login" (never the Host header's site)
            response = RedirectResponse("login" if path.endswith("/") else f"{path.rsplit('/', 1)[-1]}/login",
                                        status_code=303)
        else:
            response = JSONResponse({"error": "API key required: log in on the page, or send "
                                              "'Authorization: Apikey KEY'"}, status_code=401)
        await response(scope, receive, send)
