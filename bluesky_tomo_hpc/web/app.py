"""Routes of the web page; every fault becomes a one-line JSON ``{"error": ...}`` the page shows.

``build_web_app(context)`` returns a Starlette app meant to be mounted at ``/web`` (next to
Tiled's ``/api/v1``); all links inside it are relative, so any mount point works.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

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

from .auth import RequireKey, is_authorised, key_matches, set_session
from .catalog import Catalog, CatalogError
from .images import to_png
from .jobs_view import JobNotFound, act, job_detail, list_jobs, statistics
from .live_feed import LiveFeed

log = logging.getLogger(__name__)

STATIC = Path(str(files("bluesky_tomo_hpc.web") / "static"))
#: the 3D viewer's built file, put there at build time (see tools/vendor_viewer.sh)
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
    tiled_uri: str = ""
    _monitor: Any = field(default=None, repr=False)

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


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _number(request: Request, name: str, kind: type = int, default: Any = None) -> Any:
    """Query parameter ``name`` as ``kind`` (int or float), or ``default`` when absent."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise CatalogError(f"{name} must be {what}, got {raw!r}", 400) from None


def _png(data: Any, request: Request) -> Response:
    lo, hi = _number(request, "lo", float), _number(request, "hi", float)
    if lo is not None and hi is not None:
        if not 0 <= lo < hi <= 100:
            raise CatalogError("contrast percentiles must satisfy 0 <= lo < hi <= 100", 400)
        png = to_png(data, percentiles=(lo, hi))
    else:
        png = to_png(data)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


def build_web_app(ctx: WebContext) -> Starlette:
    """The web page's ASGI app behind ``ctx.api_key``."""

    # -- pages and login --------------------------------------------------------------------
    async def index(request: Request) -> Response:
        if request.query_params.get("api_key"):  # a bookmarked link with the key: keep it in a cookie
            response = RedirectResponse(str(request.url.remove_query_params("api_key")), status_code=303)
            set_session(response, ctx.api_key, request.scope.get("root_path", ""))
            return response
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def login_form(request: Request) -> Response:
        return FileResponse(STATIC / "login.html")

    async def login(request: Request) -> Response:
        form = await request.form()
        root = request.scope.get("root_path", "")
        if not key_matches(str(form.get("api_key", "")), ctx.api_key):
            return RedirectResponse(f"{root}/login?failed=1", status_code=303)
        response = RedirectResponse(f"{root}/", status_code=303)
        set_session(response, ctx.api_key, root)
        return response

    async def logout(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        response = RedirectResponse(f"{root}/login", status_code=303)
        response.delete_cookie("btomo_session", path=root or "/")
        return response

    # -- live -------------------------------------------------------------------------------
    async def live_state(request: Request) -> Response:
        return JSONResponse({"feed": ctx.live.status(), "latest": ctx.live.latest,
                             "finals": [{k: m[k] for k in ("run_uid", "time", "center")}
                                        for m in reversed(ctx.live.finals.values())]})

    async def live_final(request: Request) -> Response:
        uid = request.path_params["uid"]
        msg = ctx.live.finals.get(uid)
        if msg is None:
            raise CatalogError(f"no final preview of run {uid!r} in this server's memory; see "
                               "Scans and results for its stored preview")
        return JSONResponse(msg)

    async def live_stream(request: Request) -> Response:
        async def events():  # type: ignore[no-untyped-def]
            async with ctx.live.listen() as queue:
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
        since, until = _number(request, "since", float), _number(request, "until", float)
        found = ctx.catalog.runs(scan_id=_number(request, "scan_id"),
                                 sample=request.query_params.get("sample"),
                                 plan=request.query_params.get("plan"), since=since, until=until,
                                 limit=_number(request, "limit", default=50) or 50)
        return JSONResponse({"runs": found})

    def run(request: Request) -> Response:
        return JSONResponse(ctx.catalog.run(request.path_params["uid"]))

    def recons(request: Request) -> Response:
        return JSONResponse({"reconstructions": ctx.catalog.reconstructions(
            kind=request.query_params.get("kind") or None,
            limit=_number(request, "limit", default=50) or 50)})

    def recon(request: Request) -> Response:
        return JSONResponse(ctx.catalog.info(request.path_params["key"]))

    def recon_slice(request: Request) -> Response:
        data, where = ctx.catalog.slice(request.path_params["key"], request.path_params["plane"],
                                        _number(request, "index"),
                                        _number(request, "level", default=0) or 0)
        response = _png(data, request)
        response.headers["X-Slice"] = json.dumps(where)
        return response

    def recon_preview(request: Request) -> Response:
        return _png(ctx.catalog.preview(request.path_params["key"], request.path_params["plane"]), request)

    def recon_volume(request: Request) -> Response:
        import nibabel as nib
        import numpy as np

        from ..results.pictures import grey_limits

        max_side = _number(request, "max_side", default=128) or 128
        vol = ctx.catalog.small_volume(request.path_params["key"], max_side=max_side)
        lo, hi = grey_limits([vol[len(vol) // 2]])
        grey = np.clip((vol - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
        img = nib.Nifti1Image(np.ascontiguousarray(grey.transpose(2, 1, 0)), np.eye(4))
        buf = io.BytesIO(img.to_bytes())
        return Response(buf.getvalue(), media_type="application/octet-stream")

    async def viewer_js(request: Request) -> Response:
        if not VIEWER_JS.is_file():
            return _error("the 3D viewer is not installed in this package (run tools/vendor_viewer.sh "
                          "when building it)", 404)
        return FileResponse(VIEWER_JS, media_type="text/javascript")

    # -- jobs -------------------------------------------------------------------------------
    def jobs(request: Request) -> Response:
        journal = ctx.journal()
        if journal is None:
            note = f"no journal at {ctx.journal_path} yet: no job submitted"
            return JSONResponse({"jobs": [], "note": note})
        active = request.query_params.get("active") == "1"
        return JSONResponse({"jobs": list_jobs(journal, active_only=active)})

    def job(request: Request) -> Response:
        journal = ctx.journal()
        if journal is None:
            raise JobNotFound(f"no job {request.path_params['job_id']!r}: the journal is empty")
        return JSONResponse(job_detail(journal, request.path_params["job_id"], _monitor_or_none()))

    def job_action(request: Request) -> Response:
        journal = ctx.journal()
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        if journal is None:
            raise JobNotFound(f"no job {job_id!r}: the journal is empty")
        if action not in ("retry", "cancel"):
            raise CatalogError(f"unknown action {action!r}: retry or cancel", 400)
        return JSONResponse(act(journal, ctx.monitor(), job_id, action))

    def job_stats(request: Request) -> Response:
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

        checks = ctx.health() if ctx.health is not None else []
        return JSONResponse({"exit_code": exit_code(checks), "checked_at": time.time(),
                             "checks": [c.as_dict() for c in checks]})

    async def whoami(request: Request) -> Response:
        return JSONResponse({"authorised": is_authorised(request, ctx.api_key), "tiled_uri": ctx.tiled_uri,
                             "live": ctx.live.status()})

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
        log.exception("web page: %s failed", request.url.path)
        return _error(f"internal error ({type(exc).__name__}: {exc}); the server log has the details", 500)

    routes = [
        Route("/", index), Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]), Route("/api/whoami", whoami),
        Route("/api/live", live_state), Route("/api/live/stream", live_stream),
        Route("/api/live/final/{uid}", live_final),
        Route("/api/runs", runs), Route("/api/runs/{uid}", run),
        Route("/api/recon", recons), Route("/api/recon/{key}", recon),
        Route("/api/recon/{key}/slice/{plane}.png", recon_slice),
        Route("/api/recon/{key}/preview/{plane}.png", recon_preview),
        Route("/api/recon/{key}/volume.nii", recon_volume),
        Route("/api/jobs", jobs), Route("/api/jobs/stats", job_stats), Route("/api/jobs/{job_id}", job),
        Route("/api/jobs/{job_id}/{action}", job_action, methods=["POST"]),
        Route("/api/health", health), Route("/viewer.js", viewer_js),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(RequireKey, api_key=ctx.api_key)],
        exception_handlers={CatalogError: catalog_error, JobNotFound: not_found, ValueError: refused,
                            HTTPException: http_error, Exception: internal},
    )


def standalone_app(web: Starlette, mount: str = "/web") -> Starlette:
    """The web app alone (beside a site's own Tiled): mounted at ``mount``, ``/`` redirects there."""

    async def to_web(request: Request) -> Response:
        return RedirectResponse(f"{mount}/")

    async def health(request: Request) -> Response:
        return HTMLResponse("ok")

    return Starlette(routes=[Route("/", to_web), Route("/healthz", health), Mount(mount, web)])
