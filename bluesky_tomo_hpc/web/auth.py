"""The web page asks for the same API key as Tiled: in the ``Authorization: Apikey KEY`` header,
an ``api_key`` query parameter, or once in the login form, which starts a session.

Sessions live on the server (:class:`Sessions`): the cookie holds a random token (never the key
nor anything derived from it), HttpOnly and SameSite=Strict, so other sites cannot ride on it
to retry or cancel jobs; logging out ends the session on the server, so a copied cookie stops
working at once; a session also ends after :data:`SESSION_S` and when the server restarts.

Wrong keys are throttled (:class:`LoginThrottle`): after :data:`FREE_FAILURES` wrong keys from
one client, every further try (right or wrong) is answered 429 with ``Retry-After`` until a
delay that doubles with each failure (up to :data:`MAX_LOCKOUT_S`) has passed, so guessing a key
takes years instead of minutes. Redirects are relative (``Location: login``), so a forged
``Host`` header never sends a browser elsewhere.
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

COOKIE = "btomo_session"
#: paths (below the app's mount point) that need no key: the login form and its style sheet
PUBLIC = ("/login", "/static/")
#: a session's longest life (a beamtime shift and a half)
SESSION_S = 12 * 3600.0
#: sessions kept at once; the oldest ends first beyond it (bounded memory)
MAX_SESSIONS = 256
#: wrong keys a client may send before it must wait
FREE_FAILURES = 5
#: the longest wait after wrong keys
MAX_LOCKOUT_S = 900.0
#: clients whose failures are remembered (bounded memory; the oldest forgotten first)
MAX_CLIENTS = 1024


def key_matches(given: str | None, api_key: str) -> bool:
    return bool(given) and hmac.compare_digest(str(given).encode(), api_key.encode())


def presented_key(conn: HTTPConnection) -> str | None:
    """The key this request carries in its header or query (not the cookie)."""
    auth = conn.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("apikey", "bearer") and value:
        return value.strip()
    return conn.query_params.get("api_key")


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


class LoginThrottle:
    """Wrong keys per client: free at first, then a wait that doubles with each failure."""

    def __init__(self, free: int = FREE_FAILURES, first_wait_s: float = 1.0,
                 max_wait_s: float = MAX_LOCKOUT_S, max_clients: int = MAX_CLIENTS):
        self.free, self.first_wait_s, self.max_wait_s = free, first_wait_s, max_wait_s
        self.max_clients = max_clients
        self._clients: OrderedDict[str, tuple[int, float]] = OrderedDict()  # failures, locked until
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """Seconds ``client`` must still wait before its key is looked at (0: go ahead)."""
        with self._lock:
            _, until = self._clients.get(client, (0, 0.0))
        return max(0.0, until - time.monotonic())

    def failed(self, client: str) -> None:
        with self._lock:
            failures, _ = self._clients.pop(client, (0, 0.0))
            failures += 1
            extra = failures - self.free
            wait = 0.0 if extra <= 0 else min(self.max_wait_s, self.first_wait_s * 2 ** min(extra - 1, 30))
            self._clients[client] = (failures, time.monotonic() + wait)
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)


def client_of(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


def too_many(wait_s: float) -> JSONResponse:
    return JSONResponse({"error": f"too many wrong keys: try again in {wait_s:.0f} s"}, status_code=429,
                        headers={"Retry-After": str(max(1, round(wait_s)))})


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
