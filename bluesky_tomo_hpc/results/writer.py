"""The default result writer of the full-volume sink: Tiled node + a PNG of the preview slices."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..model import ScanSpec, safe_component
from .pictures import save_orthoslices_png
from .spool import ResultSpool
from .tiled_results import preview_slices, recon_key, write_reconstruction

log = logging.getLogger(__name__)


def result_metadata(spec: ScanSpec, result: Any) -> dict[str, Any]:
    """What a reconstruction node records about how it was made and from what."""
    tomo = spec.metadata.get("tomo", {}) if isinstance(spec.metadata, dict) else {}
    return {
        "center": float(result.center),
        "center_confidence": float(result.center_confidence),
        "center_method": result.center_method,
        "center_details": dict(getattr(result, "center_details", {}) or {}),
        "center_uncertain": bool((getattr(result, "center_details", {}) or {}).get("uncertain", False)),
        "timings": {k: round(float(v), 4) for k, v in result.timings.items()},
        "warnings": list(result.warnings),
        "rows": list(result.rows) if result.rows is not None else None,
        "shape": list(result.volume.shape),
        "scan_id": spec.scan_id,
        "plan_name": spec.plan_name,
        "sample": spec.metadata.get("sample") or tomo.get("sample"),
        "series": spec.metadata.get("series"),
        "scan_health": spec.metadata.get("scan_health"),  # the live findings (sinks.scan_health_sink)
        "source": spec.source,
        "raw_files": list(spec.raw_files),
    }


class TiledResultWriter:
    """Writes each reconstruction under ``container`` (a callable, so a client can be made lazily
    on the worker thread) and, when ``png_dir`` is set, saves ``<uid8>_slices.png`` there.

    A volume already in a Zarr store (``zarr_path``) is registered in place when the server reads
    the data folder (``register_in_place``: the embedded server), else uploaded chunk by chunk.
    With a ``spool``, a result Tiled does not take (server down, restarting) is kept there and
    registered later, and ``report(run_uid, message)`` puts the failure in the run's error list;
    the returned location is then ``spooled:<folder>``.
    """

    def __init__(self, container: Callable[[], Any] | Any, png_dir: str | Path | None = None,
                 kind: str = "full", *, register_in_place: bool = False,
                 spool: ResultSpool | None = None, report: Callable[[str, str], None] | None = None):
        self._container = container
        self.png_dir = Path(png_dir) if png_dir else None
        self.kind = kind
        self.register_in_place = register_in_place
        self.spool = spool
        self.report = report
        self.pngs: dict[str, Path] = {}

    def container(self) -> Any:
        return self._container() if callable(self._container) else self._container

    def write(self, spec: ScanSpec, result: Any, *, zarr_path: Path | None = None) -> str:
        previews = preview_slices(result.volume)
        if self.png_dir is not None:
            title = f"run {spec.run_uid[:8]}  centre {result.center:.2f} px"
            if (getattr(result, "center_details", {}) or {}).get("uncertain"):
                title += "  (centre uncertain)"
            self.pngs[spec.run_uid] = save_orthoslices_png(
                previews, self.png_dir / f"{safe_component(spec.run_uid[:8], 'run uid')}_slices.png", title)
        volume = {"volume_zarr": zarr_path, "register_in_place": self.register_in_place} if zarr_path \
            else {"volume": result.volume}
        metadata = result_metadata(spec, result)
        try:
            node = write_reconstruction(
                self.container(), raw_uid=spec.run_uid, params=result.params, previews=previews,
                metadata=metadata, kind=self.kind, **volume)
        except Exception as exc:
            if self.spool is None:
                raise
            return self._spool(spec, result, metadata, exc)
        key = recon_key(spec.run_uid, result.params.params_hash, self.kind)
        log.info("reconstruction of run %s written to Tiled node %s", spec.run_uid, key)
        return str(getattr(node, "uri", key))

    def _spool(self, spec: ScanSpec, result: Any, metadata: dict[str, Any], exc: Exception) -> str:
        assert self.spool is not None
        error = f"{type(exc).__name__}: {exc}"
        path = self.spool.put(raw_uid=spec.run_uid, params=result.params, volume=result.volume,
                              metadata=metadata, kind=self.kind, error=error)
        message = (f"writing the {self.kind} volume to Tiled failed ({error}); it is kept in {path} "
                   "and registered when Tiled is back (or run: bluesky-tomo-hpc recover)")
        if self.report is not None:
            self.report(spec.run_uid, message)
        else:
            log.error("run %s: %s", spec.run_uid, message)
        return f"spooled:{path}"
