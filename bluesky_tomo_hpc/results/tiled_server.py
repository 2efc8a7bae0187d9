"""The embedded Tiled server: SQLite catalog + files + DuckDB tables under one data folder.

Same storage layout as ``tiled.server.SimpleTiledServer`` (``catalog.db``, ``data/``,
``storage.duckdb``), so either can open the folder, plus the Bluesky ``json-seq`` exporter so
that ``run.documents()`` works (catalog re-processing replays runs through the same callbacks).
It listens on 127.0.0.1 only and always requires an API key.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from ..untrusted.key_throttle import WrongKeyThrottle
from ..untrusted.secrets_mask import uvicorn_log_config, with_mask_filter
from .catalog_relocation import follow_moved_folder
from .missing_data import MissingDataAnswer

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def build_tiled_app(directory: Path, api_key: str, readable_storage: Sequence[str | Path] = (),
                    mounts: Mapping[str, Any] | None = None) -> Any:
    """A Tiled ASGI app over the catalog in ``directory`` (created when missing); ``mounts``
    (path -> ASGI app, e.g. ``{"/web": ...}``, the web page) are served beside it. Wrong API keys
    sent to Tiled are throttled per client (:class:`WrongKeyThrottle`; the mounts have their own)."""
    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from tiled.catalog import from_uri as catalog_from_uri
    from tiled.config import Authentication, StreamingCacheConfig
    from tiled.media_type_registration import default_serialization_registry
    from tiled.server.app import build_app
    from tiled.utils import ensure_uri

    directory = Path(directory).resolve()
    (directory / "data").mkdir(parents=True, exist_ok=True)
    readable = [str(Path(p).resolve()) for p in readable_storage]
    # a data folder moved or restored elsewhere: its registrations follow it (catalog_relocation)
    follow_moved_folder(directory, next((Path(r) for r in readable if directory.is_relative_to(r)), None))
    catalog = catalog_from_uri(
        directory / "catalog.db",
        writable_storage=[directory / "data", ensure_uri(f"duckdb:///{directory / 'storage.duckdb'}")],
        init_if_not_exists=True,
        readable_storage=readable or None,
        cache_config=StreamingCacheConfig(uri="memory").model_dump(),
    )
    registry = copy.deepcopy(default_serialization_registry)
    registry.register("BlueskyRun", "application/json-seq", json_seq_exporter)
    app = build_app(
        catalog,
        authentication=Authentication(single_user_api_key=api_key),
        serialization_registry=registry,
    )
    for path, sub in (mounts or {}).items():
        app.mount(path, sub)
        # "/web" -> "web/", relative: the router's own slash redirect is built from the Host header
        app.add_route(path, _relative_redirect(path.rstrip("/").rsplit("/", 1)[-1] + "/"))
    # a node whose data file is gone: one line at once, not a retried "internal error" (missing_data)
    return WrongKeyThrottle(MissingDataAnswer(app, directory / "catalog.db"), skip=list(mounts or {}))


def _relative_redirect(location: str) -> Any:
    from starlette.responses import RedirectResponse

    async def redirect(request: Any) -> Any:
        return RedirectResponse(location)

    return redirect


def _log_config(directory: Path) -> dict[str, Any]:
    """Uvicorn logs to files in the data folder, so the demo's terminal stays readable."""
    from tiled.server.logging_config import LOGGING_CONFIG

    cfg = with_mask_filter(LOGGING_CONFIG)
    for name, fname in (("access", "access.log"), ("default", "error.log")):
        cfg["handlers"][name]["class"] = "logging.FileHandler"
        cfg["handlers"][name].pop("stream", None)
        cfg["handlers"][name]["filename"] = str(directory / fname)
    return cfg


class BackgroundServer:
    """An ASGI app served by uvicorn on a daemon thread, on 127.0.0.1 (started when made)."""

    def __init__(self, app: Any, *, port: int = 0, name: str = "server", startup_timeout: float = 30.0,
                 log_config: dict[str, Any] | None = None, failure_hint: str = ""):
        import uvicorn

        config = uvicorn.Config(app, host=HOST, port=port, loop="asyncio",
                                log_config=log_config or uvicorn_log_config("warning"))
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)
        self._thread.start()
        self.deadline = time.monotonic() + startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > self.deadline:
                raise RuntimeError(f"{name} did not start{failure_hint}")
            time.sleep(0.05)
        host, port_ = self._server.servers[0].sockets[0].getsockname()[:2]
        self.base = f"http://{host}:{port_}"

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


class EmbeddedTiledServer:
    """A Tiled server on a background thread of this process (notebooks, demo, tests).

    Keep a reference for as long as clients need it; ``close()`` (or leaving the ``with``
    block) stops it. Data persist in ``directory``. ``mounts`` (path -> ASGI app) are served
    beside Tiled, e.g. the web page at ``/web``.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        api_key: str | None = None,
        port: int = 0,
        readable_storage: Sequence[str | Path] = (),
        startup_timeout: float = 30.0,
        mounts: Mapping[str, Any] | None = None,
    ):
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.api_key = api_key or secrets.token_hex(16)
        app = build_tiled_app(self.directory, self.api_key, readable_storage, mounts)
        self._server = BackgroundServer(app, port=port, name="tiled-server", startup_timeout=startup_timeout,
                                        log_config=_log_config(self.directory),
                                        failure_hint=f"; see {self.directory / 'error.log'}")
        self.uri = f"{self._server.base}/api/v1"
        _wait_healthy(self._server.base, self._server.deadline)

    def client(self) -> Any:
        from tiled.client import from_uri

        return from_uri(self.uri, api_key=self.api_key)

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> EmbeddedTiledServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_healthy(base: str, deadline: float) -> None:
    with httpx.Client(trust_env=False) as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Tiled at {base} did not become healthy")
            time.sleep(0.05)


def serve_forever(
    directory: str | Path, *, api_key: str, port: int = 8000, readable_storage: Sequence[str | Path] = (),
    mounts: Mapping[str, Any] | None = None,
) -> None:
    """Run the server in the foreground on 127.0.0.1 until interrupted (``bluesky-tomo-hpc serve``)."""
    import uvicorn

    directory = Path(directory).resolve()
    app = build_tiled_app(directory, api_key, readable_storage, mounts)
    uvicorn.run(app, host=HOST, port=port, log_config=uvicorn_log_config("info"))


def raw_catalog(client: Any, name: str = "raw") -> Any:
    """The ``CatalogOfBlueskyRuns`` container that TiledWriter writes raw runs into."""
    from tiled.structures.core import Spec

    if name in client:
        return client[name]
    return client.create_container(name, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])


@contextlib.contextmanager
def connect_or_embed(
    uri: str | None, data_dir: str | Path, *, api_key: str | None = None,
    readable_storage: Sequence[str | Path] = (),
) -> Iterator[tuple[Any, EmbeddedTiledServer | None]]:
    """A client for ``uri``, or for an embedded server over ``data_dir/tiled`` when ``uri`` is None."""
    from tiled.client import from_uri

    if uri:
        yield from_uri(uri, api_key=api_key), None
        return
    data_dir = Path(data_dir).resolve()
    server = EmbeddedTiledServer(data_dir / "tiled", api_key=api_key,
                                 readable_storage=[data_dir, *readable_storage])
    try:
        yield server.client(), server
    finally:
        server.close()
