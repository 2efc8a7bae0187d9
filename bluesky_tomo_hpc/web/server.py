"""Wire the web page to a pipeline's settings: next to the embedded Tiled, or beside a site's own.

``bluesky-tomo-hpc serve`` mounts :func:`~bluesky_tomo_hpc.web.app.build_web_app` at ``/web`` on the
embedded Tiled app;
``serve --tiled-uri URI`` runs it alone (:func:`~bluesky_tomo_hpc.web.app.standalone_app`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .app import WebContext, build_web_app, standalone_app
from .catalog import Catalog
from .live_feed import LiveFeed

log = logging.getLogger(__name__)

MOUNT = "/web"


def make_context(settings: Any, *, api_key: str, tiled_uri: str | Callable[[], str],
                 preview_address: str | None = None, control_address: str | None = None,
                 monitor: Any = None,
                 extra_locations: list[Path] | None = None,
                 data_folder: Path | None = None) -> WebContext:
    """A :class:`WebContext` for ``settings``. ``tiled_uri`` may be a callable (the embedded
    server's address is known only once it listens); ``monitor``: a running pipeline's job
    monitor, else one is made from the settings when a person first retries or cancels;
    ``data_folder``: the data folder of the Tiled the page runs beside (its Zarr volumes are
    read in place; None, as beside a site's Tiled: all through Tiled's HTTP API)."""
    from tiled.client import from_uri

    from ..health.checks import run_checks

    uri = tiled_uri if callable(tiled_uri) else (lambda: tiled_uri)  # type: ignore[return-value]

    def probe() -> str | None:
        """Why Tiled cannot be used now (a refused or dead ``/healthz``), or None: one loopback
        request, answered at once when Tiled is down."""
        import httpx

        base = str(httpx.URL(uri()).copy_with(query=None, path="/"))  # type: ignore[operator]
        try:
            with httpx.Client(trust_env=False, timeout=3.0) as http:
                status = http.get(base + "healthz").status_code
        except httpx.HTTPError as exc:
            return f"{base} unreachable: {type(exc).__name__}: {exc}"
        return None if status == 200 else f"{base}healthz answered HTTP {status}"

    catalog = Catalog(lambda: from_uri(uri(), api_key=api_key),  # type: ignore[operator]
                      settings.tiled.raw_container, settings.tiled.processed_container, probe=probe)

    def monitor_factory() -> Any:
        if monitor is not None:
            return monitor
        if settings.jobs.executor == "none":
            return None
        from ..jobs.factory import make_monitor

        return make_monitor(settings, start=False)

    return WebContext(
        api_key=api_key, catalog=catalog,
        live=LiveFeed(preview_address if preview_address is not None else settings.preview.zmq_address,
                      control_address=(control_address if control_address is not None
                                       else settings.preview.control_address)),
        journal_path=Path(settings.journal_path).resolve(), monitor_factory=monitor_factory,
        health=lambda: run_checks(settings, tiled_uri=uri(), api_key=api_key,  # type: ignore[operator]
                                  locations=extra_locations or []),
        tiled_uri=uri, data_folder=data_folder,
    )


def web_mounts(settings: Any, api_key: str, tiled_uri: Callable[[], str]) -> dict[str, Any]:
    """The web page at :data:`MOUNT`, to serve beside an embedded Tiled (``demo``, ``serve``)."""
    ctx = make_context(settings, api_key=api_key, tiled_uri=tiled_uri,
                       data_folder=Path(settings.data_dir).resolve())
    return {MOUNT: build_web_app(ctx)}


class WebServer:
    """The web page alone on a uvicorn thread on 127.0.0.1 (beside a site's Tiled; tests)."""

    def __init__(self, ctx: WebContext, *, port: int = 0, startup_timeout: float = 30.0):
        from ..results.tiled_server import BackgroundServer

        self.ctx = ctx
        self._server = BackgroundServer(standalone_app(build_web_app(ctx), MOUNT), port=port,
                                        name="web-server", startup_timeout=startup_timeout)
        self.url = f"{self._server.base}{MOUNT}/"

    def close(self) -> None:
        self._server.close()
        self.ctx.close()
