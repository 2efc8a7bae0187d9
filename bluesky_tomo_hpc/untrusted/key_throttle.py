"""Wrong API keys are throttled per client, on the web page and on Tiled's own API.

After :data:`FREE_FAILURES` wrong keys from one client, every further try (right or wrong) is
answered 429 with ``Retry-After`` until a delay that doubles with each failure (up to
:data:`MAX_LOCKOUT_S`) has passed, so guessing a key takes years instead of minutes. A request that
carries no key is never counted (it is not a guess: Tiled answers 401 and the client asks again).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: wrong keys a client may send before it must wait
FREE_FAILURES = 5
#: the longest wait after wrong keys
MAX_LOCKOUT_S = 900.0
#: clients whose failures are remembered (bounded memory; the oldest forgotten first)
MAX_CLIENTS = 1024


def presented_key(conn: HTTPConnection) -> str | None:
    """The key this request carries in its header or query (not the cookie)."""
    auth = conn.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("apikey", "bearer") and value:
        return value.strip()
    return conn.query_params.get("api_key")


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


class WrongKeyThrottle:
    """ASGI middleware in front of Tiled: a request whose key Tiled refuses (401) counts as a
    failure of its client, one it accepts clears them, and a client still waiting gets 429 without
    its key being looked at. Paths under ``skip`` (the web page, with its own gate) pass through."""

    def __init__(self, app: ASGIApp, throttle: LoginThrottle | None = None, skip: Sequence[str] = ()):
        self.app = app
        self.throttle = throttle or LoginThrottle()
        self.skip = tuple(p.rstrip("/") for p in skip if p.strip("/"))

    def _skipped(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.skip)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._skipped(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        if presented_key(conn) is None:
            await self.app(scope, receive, send)
            return
        client = client_of(conn)
        wait = self.throttle.wait_s(client)
        if wait > 0:
            await too_many(wait)(scope, receive, send)
            return
        status: list[int] = []

        async def keep_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        await self.app(scope, receive, keep_status)
        if status and status[0] == 401:
            self.throttle.failed(client)
        elif status and status[0] < 400:
            self.throttle.succeeded(client)
