"""Routes of the web page; every fault becomes a one-line JSON ``{"error": ...}`` the page shows.

``build_web_app(context)`` returns a Starlette app meant to be mounted at ``/web`` (next to
Tiled's ``/api/v1``); all links inside it are relative, so any mount point works.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..results.missing_data import MISSING_DATA_STATUS, missing_data_detail
from ..untrusted.secrets_mask import mask_secrets, mask_text
from .auth import Gate, RequireKey, is_authorised, too_many
from .catalog import Catalog, CatalogError
from .jobs_view import JobNotFound, act, job_detail, list_jobs, statistics
from .live_feed import LiveFeed
from .query import Query, QueryError, path_text
from .recon_routes import MAX_ROWS, recon_routes
from .volume_reader import VolumeReader

log = logging.getLogger(__name__)

STATIC = Path(str(files("bluesky_tomo_hpc.web") / "static"))
#: the 3D viewer's built file (niivue), committed in the package with its licence beside it
VIEWER_JS = STATIC / "vendor" / "niivue.umd.js"
KEEPALIVE_S = 15.0


@dataclass
class WebContext:
    """What the page reads: Tiled (through ``catalog``), the journal, the live preview, health."""

    api_key: str
    catalog: Catalog
    live: LiveFeed
    journal_path: Path | None = None
    #: builds the job monitor used for retry/cancel and log tails (None: read-only jobs page)
    monitor_factory: Callable[[], Any] | None = None
    #: returns the health checks (list of :class:`~bluesky_tomo_hpc.health.Check`)
    health: Callable[[], list[Any]] | None = None
    #: Tiled's address as a person would use it in Python (a callable: known once Tiled listens)
    tiled_uri: str | Callable[[], str] = ""
    #: the data folder of the Tiled the page runs beside: its Zarr volumes are read in place
    data_folder: Path | None = None
    _monitor: Any = field(default=None, repr=False)
    reader: VolumeReader = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.reader = VolumeReader(self.catalog, api_key=self.api_key, tiled_uri=self.tiled_address,
                                   data_folder=self.data_folder)

    def tiled_address(self) -> str:
        return self.tiled_uri() if callable(self.tiled_uri) else self.tiled_uri

    def journal(self) -> Any:
        from ..jobs.journal import Journal

        if self.journal_path is None:
            raise CatalogError("no job journal configured for this server", 404)
        if not Path(self.journal_path).exists():
            return None
        return Journal(self.journal_path)

    def monitor(self) -> Any:
        if self._monitor is None and self.monitor_factory is not None:
            self._monitor = self.monitor_factory()
        return self._monitor

    def close(self) -> None:
        self.live.close()
        self.reader.close()


#: the largest login form body
MAX_FORM_BYTES = 4096
#: the largest live slice index the page may ask for (the preview checks its own shape)
MAX_SLICE_INDEX = 65535
#: the largest scan id a search takes (Tiled stores 64-bit integers)
MAX_SCAN_ID = 2**53


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": mask_text(message)}, status_code=status)


def build_web_app(ctx: WebContext, gate: Gate | None = None) -> Starlette:
    """The web page's ASGI app behind ``ctx.api_key`` (``gate``: its sessions and login
    throttle, made here unless given; kept as ``app.state.gate``). Every redirect is relative."""
    gate = gate or Gate(ctx.api_key)

    # -- pages and login --------------------------------------------------------------------
    async def index(request: Request) -> Response:
        Query(request)
        if request.query_params.get("api_key"):  # a bookmarked link with the key: keep it in a session
            verdict = gate.check_key(request, request.query_params["api_key"])
            if verdict is not True:
                return too_many(verdict) if verdict else RedirectResponse("login?failed=1", status_code=303)
            rest = request.url.remove_query_params("api_key").query
            response = RedirectResponse(f"./?{rest}" if rest else "./", status_code=303)
            gate.start_session(response, request.scope.get("root_path", ""))
            return response
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def login_form(request: Request) -> Response:
        Query(request, ("failed",))
        return FileResponse(STATIC / "login.html")

    async def login(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():  # bounded: the form holds one key
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return _error(f"a login form is at most {MAX_FORM_BYTES} bytes", 413)
        try:
            fields = parse_qs(body.decode("utf-8"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            fields = {}
        verdict = gate.check_key(request, (fields.get("api_key") or [""])[0])
        if verdict is not True:
            return too_many(verdict) if verdict else RedirectResponse("login?failed=1", status_code=303)
        response = RedirectResponse("./", status_code=303)
        gate.start_session(response, request.scope.get("root_path", ""))
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("login", status_code=303)
        gate.end_session(request, response, request.scope.get("root_path", ""))
        return response

    # -- live -------------------------------------------------------------------------------
    async def live_state(request: Request) -> Response:
        Query(request)
        return JSONResponse({"feed": ctx.live.status(), "latest": ctx.live.latest,
                             "finals": [{k: m[k] for k in ("run_uid", "time", "center")}
                                        for m in reversed(ctx.live.finals.values())]})

    async def live_final(request: Request) -> Response:
        Query(request)
        uid = path_text(request, "uid")
        msg = ctx.live.finals.get(uid)
        if msg is None:
            raise CatalogError(f"no final preview of run {uid!r} in this server's memory; see "
                               "Scans and results for its stored preview")
        return JSONResponse(msg)

    def live_slices(request: Request) -> Response:
        """Move the running scan's three slices (POST; each index checked here, on the wire and
        by the preview itself): ``run`` and any of ``xy`` (z), ``xz`` (y), ``yz`` (x)."""
        q = Query(request, ("run", "xy", "xz", "yz"))
        uid = q.text("run", 200)
        wanted = {p: v for p in ("xy", "xz", "yz") if (v := q.integer(p, 0, MAX_SLICE_INDEX)) is not None}
        if not uid or not wanted:
            raise QueryError("give run=UID and at least one of xy, xz, yz (slice indices)")
        return JSONResponse({"run_uid": uid, "indices": ctx.live.move_slices(uid, wanted)})

    async def live_stream(request: Request) -> Response:
        Query(request)
        if ctx.live.full:  # bounded: each follower holds a connection and a queue
            return JSONResponse({"error": f"{ctx.live.max_listeners} browsers already follow the live "
                                 "preview; try again later"}, status_code=503, headers={"Retry-After": "30"})

        async def events():  # type: ignore[no-untyped-def]
            async with ctx.live.listen() as queue:  # LiveFeedFull (a race past the check) ends it
                yield "retry: 2000\n\n"  # at once: the browser sees the stream open (headers flushed)
                if ctx.live.latest is not None:
                    yield f"data: {json.dumps(ctx.live.latest)}\n\n"
                while True:
                    try:
                        msg = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield ": keepalive\n\n"
                        continue
                    yield f"data: {json.dumps(msg)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # -- scans and results ------------------------------------------------------------------
    def runs(request: Request) -> Response:
        q = Query(request, ("scan_id", "sample", "plan", "since", "until", "limit"))
        filters = {"scan_id": q.integer("scan_id", 0, MAX_SCAN_ID), "sample": q.text("sample"),
                   "plan": q.text("plan"), "since": q.number("since", 0, 1e11),
                   "until": q.number("until", 0, 1e11)}
        found = ctx.catalog.runs(**filters, limit=q.integer("limit", 1, MAX_ROWS, 50))
        body: dict[str, Any] = {"runs": found}
        if not found:  # an empty catalog is a normal state: say what fills it
            body["note"] = ("No run matches." if any(v is not None for v in filters.values()) else
                            "No scan in the catalog yet: a scan run with this pipeline (or "
                            "bluesky-tomo-hpc demo) appears here by itself.")
        return JSONResponse(body)

    def run(request: Request) -> Response:
        Query(request)
        return JSONResponse(ctx.catalog.run(request.path_params["uid"]))

    async def viewer_js(request: Request) -> Response:
        Query(request)
        if not VIEWER_JS.is_file():
            return _error(f"the 3D viewer's file {VIEWER_JS.name} is missing from this installation "
                          "of the package (reinstall it)", 404)
        return FileResponse(VIEWER_JS, media_type="text/javascript")

    # -- jobs -------------------------------------------------------------------------------
    def jobs(request: Request) -> Response:
        active = Query(request, ("active",)).choice("active", ("0", "1"), "0") == "1"
        journal = ctx.journal()
        if journal is None:
            note = f"no journal at {ctx.journal_path} yet: no job submitted"
            return JSONResponse({"jobs": [], "note": note})
        return JSONResponse({"jobs": list_jobs(journal, active_only=active)})

    def job(request: Request) -> Response:
        Query(request)
        job_id = path_text(request, "job_id")
        journal = ctx.journal()
        if journal is None:
            raise JobNotFound(f"no job {job_id!r}: the journal is empty")
        return JSONResponse(job_detail(journal, job_id, _monitor_or_none()))

    def job_action(request: Request) -> Response:
        Query(request)
        journal = ctx.journal()
        job_id, action = path_text(request, "job_id"), request.path_params["action"]
        if journal is None:
            raise JobNotFound(f"no job {job_id!r}: the journal is empty")
        if action not in ("retry", "cancel"):
            raise CatalogError(f"unknown action {action!r}: retry or cancel", 400)
        return JSONResponse(act(journal, ctx.monitor(), job_id, action))

    def job_stats(request: Request) -> Response:
        Query(request)
        journal = ctx.journal()
        return JSONResponse({"stages": statistics(journal) if journal is not None else []})

    def _monitor_or_none() -> Any:
        try:
            return ctx.monitor()
        except Exception as exc:
            log.warning("no job monitor for the web page: %s", exc)
            return None

    # -- health -----------------------------------------------------------------------------
    def health(request: Request) -> Response:
        from ..health.checks import exit_code

        Query(request)
        checks = ctx.health() if ctx.health is not None else []
        return JSONResponse({"exit_code": exit_code(checks), "checked_at": time.time(),
                             "checks": mask_secrets([c.as_dict() for c in checks])})

    async def whoami(request: Request) -> Response:
        Query(request)
        return JSONResponse({"authorised": is_authorised(request, gate),
                             "tiled_uri": mask_text(ctx.tiled_address()),
                             "live": mask_secrets(ctx.live.status())})

    # -- errors -----------------------------------------------------------------------------
    async def catalog_error(request: Request, exc: Exception) -> Response:
        return _error(str(exc), getattr(exc, "status", 404))

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(str(exc), 404)

    async def refused(request: Request, exc: Exception) -> Response:
        return _error(str(exc), 409)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(f"{exc.detail}: {request.url.path}", exc.status_code)

    async def internal(request: Request, exc: Exception) -> Response:
        if (line := missing_data_detail(exc)) is not None:  # a node whose data file is gone
            return _error(line, MISSING_DATA_STATUS)
        log.exception("web page: %s failed", request.url.path)
        return _error(f"internal error ({type(exc).__name__}: {exc}); the server log has the details", 500)

    routes = [
        Route("/", index), Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]), Route("/api/whoami", whoami),
        Route("/api/live", live_state), Route("/api/live/stream", live_stream),
        Route("/api/live/final/{uid}", live_final),
        Route("/api/live/slices", live_slices, methods=["POST"]),
        Route("/api/runs", runs), Route("/api/runs/{uid}", run),
        *recon_routes(ctx.catalog, ctx.reader),
        Route("/api/jobs", jobs), Route("/api/jobs/stats", job_stats), Route("/api/jobs/{job_id}", job),
        Route("/api/jobs/{job_id}/{action}", job_action, methods=["POST"]),
        Route("/api/health", health), Route("/viewer.js", viewer_js),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequireKey, gate=gate)],
        exception_handlers={CatalogError: catalog_error, JobNotFound: not_found, ValueError: refused,
                            HTTPException: http_error, Exception: internal},
    )
    app.router.redirect_slashes = False  # its redirect would be absolute, built from the Host header
    app.state.gate = gate
    return app


def standalone_app(web: Starlette, mount: str = "/web") -> Starlette:
    """The web app alone (beside a site's own Tiled): mounted at ``mount``, ``/`` redirects there."""

    async def to_web(request: Request) -> Response:
        return RedirectResponse(f"{mount.strip('/')}/")  # relative: never the Host header's site

    async def health(request: Request) -> Response:
        return HTMLResponse("ok")

    app = Starlette(routes=[Route("/", to_web), Route(mount, to_web), Route("/healthz", health),
                            Mount(mount, web)])
    app.router.redirect_slashes = False
    return app
