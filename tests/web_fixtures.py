"""A beamline catalog for the web page's browser tests, made in seconds: an embedded Tiled with
the page mounted at /web, raw runs written by a real RunEngine and TiledWriter, and
reconstructions of a known phantom written as the pipeline writes them (so every value the page
shows can be checked against numpy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

KEY = "webviewkey0123456789abcdef"
WAIT_MS = 120_000  # a loaded 2-core machine: wait on conditions, generously


def phantom(shape: tuple[int, int, int] = (40, 64, 72), shift: float = 0.0) -> np.ndarray:
    """An ellipsoid (0.5) with a denser ball (1.0) off its centre, and a little noise; float32."""
    nz, ny, nx = shape
    z, y, x = np.meshgrid(*(np.linspace(-0.5, 0.5, n, dtype=np.float32) for n in shape), indexing="ij")
    v = ((x / 0.4) ** 2 + (y / 0.35) ** 2 + (z / 0.45) ** 2 < 1).astype(np.float32) * 0.5
    v += ((x - 0.12 - shift) ** 2 + y**2 + z**2 < 0.12**2).astype(np.float32) * 0.5
    v += np.random.default_rng(0).normal(0, 0.01, v.shape).astype(np.float32)
    return v


def write_run(raw: Any, sample: str) -> str:
    """One raw run through a real RunEngine and TiledWriter (scan_id 1: a fresh RunEngine)."""
    from bluesky import RunEngine
    from bluesky.callbacks.tiled_writer import TiledWriter
    from bluesky.plans import count
    from ophyd.sim import det

    RE = RunEngine({}, context_managers=[])
    RE.subscribe(TiledWriter(raw))
    (uid,) = RE(count([det], num=1), sample=sample)
    return uid


def write_recon(
    processed: Any,
    uid: str,
    volume: np.ndarray | None,
    *,
    kind: str = "full",
    filter_name: str = "shepp",
    **metadata: Any,
) -> str:
    from bluesky_tomo_hpc.engine.params import ReconParams
    from bluesky_tomo_hpc.results.tiled_results import write_reconstruction

    previews = (
        None
        if volume is not None
        else {"xy": phantom()[20], "xz": phantom()[:, 32], "yz": phantom()[:, :, 36]}
    )
    node = write_reconstruction(
        processed,
        raw_uid=uid,
        params=ReconParams(filter_name=filter_name),
        volume=volume,
        previews=previews,
        kind=kind,
        metadata=metadata,
    )
    return node.item["id"]


class Beamline:
    """The embedded Tiled + page; ``close()`` stops both."""

    def __init__(self, folder: Path, *, executor: str = "none"):
        from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer
        from bluesky_tomo_hpc.settings import Settings
        from bluesky_tomo_hpc.web.app import build_web_app
        from bluesky_tomo_hpc.web.server import MOUNT, make_context

        self.settings = Settings(data_dir=folder, jobs={"executor": executor})
        holder: dict[str, Any] = {}
        self.ctx = make_context(
            self.settings, api_key=KEY, tiled_uri=lambda: holder["server"].uri, preview_address="",
            data_folder=folder,
        )
        self.server = EmbeddedTiledServer(
            folder / "tiled", api_key=KEY, mounts={MOUNT: build_web_app(self.ctx)}
        )
        holder["server"] = self.server
        self.client = self.server.client()
        self.web = self.server.uri.removesuffix("/api/v1") + MOUNT + "/"

    def containers(self) -> tuple[Any, Any]:
        from bluesky_tomo_hpc.results.tiled_results import processed_container
        from bluesky_tomo_hpc.results.tiled_server import raw_catalog

        return raw_catalog(self.client), processed_container(self.client)

    def close(self) -> None:
        self.ctx.close()
        self.server.close()
