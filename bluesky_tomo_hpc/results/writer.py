"""The default result writer of the full-volume sink: Tiled node + a PNG of the preview slices."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..model import ScanSpec, safe_component
from .pictures import save_orthoslices_png
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
        "source": spec.source,
        "raw_files": list(spec.raw_files),
    }


class TiledResultWriter:
    """Writes each reconstruction under ``container`` (a callable, so a client can be made lazily
    on the worker thread) and, when ``png_dir`` is set, saves ``<uid8>_slices.png`` there.

    A volume already in a Zarr store (``zarr_path``) is registered in place when the server reads
    the data folder (``register_in_place``: the embedded server), else uploaded chunk by chunk.
    """

    def __init__(self, container: Callable[[], Any] | Any, png_dir: str | Path | None = None,
                 kind: str = "full", *, register_in_place: bool = False):
        self._container = container
        self.png_dir = Path(png_dir) if png_dir else None
        self.kind = kind
        self.register_in_place = register_in_place
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
        container = self.container()
        volume = {"volume_zarr": zarr_path, "register_in_place": self.register_in_place} if zarr_path \
            else {"volume": result.volume}
        node = write_reconstruction(
            container, raw_uid=spec.run_uid, params=result.params, previews=previews,
            metadata=result_metadata(spec, result), kind=self.kind, **volume)
        key = recon_key(spec.run_uid, result.params.params_hash, self.kind)
        log.info("reconstruction of run %s written to Tiled node %s", spec.run_uid, key)
        return str(getattr(node, "uri", key))
