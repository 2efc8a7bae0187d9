"""The end-to-end demo: a simulated scan through a real RunEngine, reconstructed and served.

simulated beamline -> RunEngine (TiledWriter + tomography callback) -> live preview
-> full volume at stop -> MPI batch job (local ``mpiexec``) -> results in the embedded Tiled.
Used by ``bluesky-tomo-hpc demo``, the example notebook and the tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.params import ReconParams
from ..model import safe_component
from ..settings import Settings

Say = Callable[[str], None]


@dataclass
class DemoReport:
    """Where everything went and how long it took."""

    data_dir: Path
    tiled_uri: str = ""
    api_key: str = ""
    raw_uid: str = ""
    scan_id: int | None = None
    raw_node: str = ""
    nodes: dict[str, str] = field(default_factory=dict)
    pngs: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    center: float | None = None
    center_confidence: float | None = None
    volume_shape: tuple[int, ...] = ()
    volume_bytes: int = 0
    phantom_correlation: float | None = None
    batch: dict[str, Any] = field(default_factory=dict)
    preview: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    web_url: str = ""
    preview_address: str = ""


def phantom_correlation(volume: Any, phantom: Any, mask_ratio: float = 0.9,
                        slab_voxels: int = 4 * 2**20) -> float:
    """Pearson correlation of a reconstruction with the voxelised phantom inside a disc.

    In slabs of about ``slab_voxels`` voxels (the phantom voxelised slab by slab, the sums merged
    as in Chan et al.'s pairwise update): memory stays at a few slabs whatever the volume
    (900 x 256 x 1024 took 18 GB at once). ``volume`` is any array that slices (NumPy, Zarr).
    """
    nz, ny, nx = volume.shape
    yy, xx = np.mgrid[:ny, :nx]
    disc = np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2) <= mask_ratio * min(ny, nx) / 2
    step = max(1, slab_voxels // (ny * nx))
    n = 0
    mean_a = mean_b = m2a = m2b = cab = 0.0
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        a = np.asarray(volume[z0:z1])[:, disc].astype(np.float64).ravel()
        b = phantom.voxelise((nz, ny, nx), slices=(z0, z1))[:, disc].astype(np.float64).ravel()
        k = a.size
        ma, mb = a.mean(), b.mean()
        da, db = a - ma, b - mb
        sa, sb, sab = float(da @ da), float(db @ db), float(da @ db)
        total = n + k
        dma, dmb = ma - mean_a, mb - mean_b
        m2a += sa + dma * dma * n * k / total
        m2b += sb + dmb * dmb * n * k / total
        cab += sab + dma * dmb * n * k / total
        mean_a += dma * k / total
        mean_b += dmb * k / total
        n = total
    return float(cab / np.sqrt(m2a * m2b))


def demo_settings(data_dir: Path, *, executor: str = "local", ranks: int = 2,
                  base: Settings | None = None) -> Settings:
    """``base`` (the settings every command loads: defaults < file < environment; plain defaults
    when None) with the demo's own: the embedded Tiled server over ``data_dir`` (never a site's
    catalog), shepp filter, automatic centre, the given executor and ranks."""
    base = base or Settings()
    return base.model_copy(update={
        "data_dir": data_dir,
        "recon": ReconParams(filter_name="shepp", center="auto"),
        "jobs": base.jobs.model_copy(update={"executor": executor, "ranks": ranks}),
        "tiled": base.tiled.model_copy(update={"uri": None}),
    })


def loopback_address() -> str:
    """A free ``tcp://127.0.0.1:PORT`` for the live preview (or its control) when the settings give none."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


#: builds the apps served beside the demo's Tiled (the web page) from the settings, the API key
#: and Tiled's address (a callable: known once the server listens)
Mounts = Callable[[Settings, str, Callable[[], str]], dict[str, Any]]


def run_demo(
    data_dir: str | Path,
    *,
    num_projections: int = 180,
    shape: tuple[int, int] = (64, 128),
    flavour: str = "ophyd_async",
    executor: str = "local",
    ranks: int = 2,
    say: Say = print,
    on_progress: Callable[[int, int, str], None] | None = None,
    keep_server: bool = False,
    settings: Settings | None = None,
    mounts: Mounts | None = None,
    port: int = 0,
) -> tuple[DemoReport, Any]:
    """Run the whole demo; returns the report and, with ``keep_server``, the live pipeline
    (else None: the embedded server is stopped, the data stay in ``data_dir``).

    ``settings``: what the command loaded (see :func:`demo_settings`). The live preview is
    published on ``preview.zmq_address``, or a free loopback port when that is unset, and
    ``mounts`` (the web page) are served beside Tiled on ``port`` (0: any free port), so the
    page shows the scan while it runs."""
    from bluesky import RunEngine

    from ..results.tiled_results import find_reconstructions
    from ..sim.beamline import make_sim_beamline
    from ..sim.plans import tomo_scan
    from ..sources.progress import ScanProgress

    data_dir = Path(data_dir).resolve()
    report = DemoReport(data_dir=data_dir)
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    settings = demo_settings(data_dir, executor=executor, ranks=ranks, base=settings)
    if settings.preview.enabled:  # the page shows the scan and moves its slices
        addresses = {k: loopback_address() for k in ("zmq_address", "control_address")
                     if not getattr(settings.preview, k)}
        settings = settings.model_copy(update={"preview": settings.preview.model_copy(update=addresses)})
    pipeline = _start(settings, data_dir, mounts, port)
    report.tiled_uri = pipeline.server.uri
    report.api_key = pipeline.server.api_key
    report.preview_address = settings.preview.zmq_address or ""
    if mounts is not None:
        report.web_url = report.tiled_uri.removesuffix("/api/v1") + "/web/"
    report.timings["tiled_start"] = time.perf_counter() - t0
    say(f"Tiled server     {report.tiled_uri}  (embedded; data in {data_dir / 'tiled'})")
    if report.web_url:
        say(f"Web page         {report.web_url}?api_key={report.api_key}  (live preview from "
            f"{report.preview_address})")

    try:
        RE = RunEngine({})
        beamline = make_sim_beamline(data_dir / "raw", flavour=flavour, shape=shape)
        pipeline.subscribe(RE)
        if on_progress is not None:
            RE.subscribe(ScanProgress(on_progress))
        say(f"Scan             {num_projections} projections of {shape[0]}x{shape[1]} px over 180 deg, "
            f"10 darks, 10 flats ({flavour} detector, rotation axis {beamline.rotation_offset_px:+.1f} px "
            "off the detector middle)")
        t0 = time.perf_counter()
        (uid,) = RE(tomo_scan(beamline.detector, beamline.stage, num_projections=num_projections,
                              num_darks=10, num_flats=10, md={"sample": "shepp-logan phantom"}))
        report.timings["scan"] = time.perf_counter() - t0
        report.raw_uid = uid
        say(f"                 done in {report.timings['scan']:.1f} s, run uid {uid}")

        t0 = time.perf_counter()
        if not pipeline.wait(timeout=600):
            report.errors.append("timed out waiting for the reconstruction")
        report.timings["after_scan"] = time.perf_counter() - t0
        report.errors.extend(f"{u[:8]}: {m}" for u, m in pipeline.callback.errors)

        preview = pipeline.previews.get(uid)
        if preview is not None:
            md = preview.metadata
            report.preview = {"stop_to_final_s": md.get("stop_to_final_s"), "center": md.get("center"),
                              "center_source": md.get("center_source"),
                              "projections": md.get("n_projections_used"), "degraded": md.get("degraded")}
            png = data_dir / "previews" / f"{safe_component(uid[:8], 'run uid')}_preview.png"
            if png.exists():
                report.pngs["live"] = png
            say(f"Live preview     final {md.get('stop_to_final_s', float('nan')):.2f} s after the stop "
                f"document, {md.get('n_projections_used')} projections, centre {md.get('center', 0):.2f} px "
                f"({md.get('center_source')})")
        run = pipeline.raw[uid]
        report.scan_id = run.start.get("scan_id")
        report.raw_node = f"{pipeline.settings.tiled.raw_container}/{uid}"
        outcome = pipeline.service.outcomes.get(uid)
        if outcome is None or not outcome.ok:
            report.errors.append(f"full reconstruction: {outcome.message if outcome else 'did not run'}")
        else:
            report.center, report.center_confidence = outcome.center, outcome.center_confidence
            report.volume_shape = outcome.shape
            report.volume_bytes = int(np.prod(outcome.shape)) * 4
            report.timings["reconstruction"] = outcome.timings.get("total", outcome.seconds)
            report.phantom_correlation = phantom_correlation(outcome.result.volume, beamline.phantom)
            png = pipeline.result_writer.pngs.get(uid)
            if png is not None:
                report.pngs["full"] = png
        if pipeline.monitor is not None:
            say(f"Batch job        {settings.jobs.executor} executor, {settings.jobs.ranks} MPI ranks ...")
            t0 = time.perf_counter()
            for rec in pipeline.wait_for_jobs(timeout=900):
                report.timings["batch_job"] = time.perf_counter() - t0
                if rec.state != "REGISTERED":
                    report.errors.append(f"batch job {rec.job_id}: {rec.state} {rec.error or ''}".strip())
                    continue
                result = rec.result or {}
                report.batch = {"job_id": rec.job_id, "state": rec.state,
                                "ome_zarr": result.get("ome_zarr"), "tiff_dir": result.get("tiff_dir"),
                                "provenance": str(rec.job.outputs.provenance_path)}
                say(f"                 job {rec.job_id} {rec.state} in {report.timings['batch_job']:.1f} s")
        for node in find_reconstructions(pipeline.processed, raw_uid=uid):
            kind = node.metadata.get("kind", "?")
            report.nodes[kind] = f"{pipeline.settings.tiled.processed_container}/{node.item['id']}"
        report.timings["total"] = time.perf_counter() - t_all
    except BaseException:
        pipeline.close()
        raise
    if keep_server:
        return report, pipeline
    pipeline.close()
    return report, None


def _start(settings: Settings, data_dir: Path, mounts: Mounts | None, port: int) -> Any:
    """The embedded Tiled server (with ``mounts`` beside it) and the pipeline writing to it."""
    import secrets

    from ..results.tiled_server import EmbeddedTiledServer
    from .session import TomoPipeline

    key = settings.tiled.api_key or secrets.token_hex(16)
    holder: dict[str, str] = {}
    apps = mounts(settings, key, lambda: holder["uri"]) if mounts is not None else None
    server = EmbeddedTiledServer(data_dir / "tiled", api_key=key, port=port, readable_storage=[data_dir],
                                 mounts=apps)
    holder["uri"] = server.uri
    try:
        return TomoPipeline(settings, server.client(), server=server)
    except BaseException:
        server.close()
        raise
