"""A time series' reconstructions grouped: one Tiled container and one OME-Zarr with a t axis.

Layout::

    data_dir/series/<series_id>.ome.zarr     OME-Zarr (NGFF multiscales, axes t, z, y, x),
                                             array "0" of shape (n_t, nz, ny, nx) float32,
                                             NaN where a time point is missing
    series/<series_id>                       Tiled container, specs=["TomoSeries"]
      metadata: series_id, sample, geometry, center, params_hash, coordinate,
                members [{index, raw_uid, recon_key, coordinate, elapsed_s}], rejected [...]
      volume                                 the OME-Zarr's array "0", registered in place

Each member's own reconstruction stays where it always is (``processed/<uid>-<hash>-full``, with
``series`` in its metadata), so ``Key("series.id") == id`` finds members in ``raw`` and
``processed`` alike. A member whose geometry differs from the series' first (detector frame
shape, volume shape, projections, reconstruction parameters) is *not* added: the reason is logged
and kept under ``rejected``, and its own reconstruction is untouched. Nothing is lost.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..extras import require
from ..metadata.sample import NAME_PATTERN
from ..metadata.series_point import series_point
from .provenance import jsonable
from .tiled_results import recon_key, register_zarr_in_place
from .volume_files import OME_ZARR_FEATURE

log = logging.getLogger(__name__)

SERIES_SPEC = "TomoSeries"
SLAB = 16
AXES = ("t", "z", "y", "x")


def series_geometry(spec: Any, result: Any) -> dict[str, Any]:
    """What must be equal for two scans to be time points of one 4D volume."""
    tomo = spec.metadata.get("tomo", {}) if isinstance(spec.metadata, dict) else {}
    return {
        "detector": spec.detector_key,
        "frame_shape": [int(n) for n in spec.frame_shape],
        "volume_shape": [int(n) for n in result.volume.shape],
        "n_projections": spec.n_projections,
        "angles": tomo.get("angles"),
        # with the centre the reconstruction used: the first member searched it ("auto"), the
        # others had it pinned (metadata.pinned_center), so the hashes agree when all is well
        "params_hash": series_params(result).params_hash,
    }


def series_params(result: Any) -> Any:
    """The parameters of a member with its centre written out."""
    return result.params.model_copy(update={"center": float(result.center)})


def _differences(first: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [f"{k} {now.get(k)!r} differs from the series' {first.get(k)!r}"
            for k in first if jsonable(first.get(k)) != jsonable(now.get(k))]


def write_series_zarr(path: Path, index: int, volume: Any) -> Any:
    """Put ``volume`` (nz, ny, nx) at time ``index`` of the OME-Zarr at ``path`` (created or
    grown as needed), slab by slab; the NGFF metadata is (re)written; returns the array."""
    import zarr
    write_multiscales_metadata = require("ome_zarr.writer", OME_ZARR_FEATURE).write_multiscales_metadata
    nz, ny, nx = (int(n) for n in volume.shape)
    group = zarr.open_group(str(path), mode="a")
    if "0" in group:
        arr = group["0"]
        if tuple(arr.shape[1:]) != (nz, ny, nx):
            raise ValueError(f"{path.name}: volume shape {(nz, ny, nx)} differs from {tuple(arr.shape[1:])}")
        if arr.shape[0] <= index:
            arr.resize((index + 1, nz, ny, nx))
    else:
        arr = group.create_array("0", shape=(index + 1, nz, ny, nx), dtype="float32",
                                 chunks=(1, min(nz, SLAB), ny, nx), fill_value=np.nan)
        datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * 4}]}]
        write_multiscales_metadata(group, datasets, axes=[
            {"name": "t", "type": "time", "unit": "second"}, {"name": "z", "type": "space"},
            {"name": "y", "type": "space"}, {"name": "x", "type": "space"}], name="series")
    for a in range(0, nz, SLAB):
        arr[index, a:a + SLAB] = np.asarray(volume[a:a + SLAB], dtype=np.float32)
    return arr


class SeriesCollector:
    """A ReconService listener that adds each series member's volume to its series.

    ``container``: the Tiled container of series (a callable for a lazily made client);
    ``register_in_place``: the Tiled server can read ``folder`` (the embedded server can).
    """

    def __init__(self, container: Any, folder: str | Path, *, register_in_place: bool = True):
        self._container = container
        self.folder = Path(folder)
        self.register_in_place = register_in_place
        #: series id -> the last message about it (for logs, tests and the demo)
        self.messages: dict[str, str] = {}

    def container(self) -> Any:
        return self._container() if callable(self._container) else self._container

    def zarr_path(self, series_id: str) -> Path:
        if not re.match(NAME_PATTERN, series_id):  # checked when the plan ran; a catalog may lie
            raise ValueError(f"series id {series_id!r} must match {NAME_PATTERN}")
        return self.folder / f"{series_id}.ome.zarr"

    def __call__(self, outcome: Any) -> None:
        spec = getattr(outcome, "spec", None)
        point = series_point(spec.metadata) if spec is not None else None
        if point is None or not outcome.ok or outcome.result is None:
            return
        try:
            self.add(spec, outcome.result, point)
        except Exception as exc:  # the member's own reconstruction is already written
            log.exception("series %s: scan %s not added", point.id, spec.run_uid)
            self.messages[point.id] = f"scan {spec.run_uid[:8]} not added: {type(exc).__name__}: {exc}"

    def node(self, series_id: str, first: dict[str, Any]) -> Any:
        container = self.container()
        if series_id in container:
            return container[series_id]
        return container.create_container(series_id, metadata=jsonable(first), specs=[SERIES_SPEC])

    def add(self, spec: Any, result: Any, point: Any) -> str:
        """Add one member; returns what happened (also in :attr:`messages`)."""
        geometry = series_geometry(spec, result)
        member = {"index": point.index, "raw_uid": spec.run_uid, "elapsed_s": point.elapsed_s,
                  "recon_key": recon_key(spec.run_uid, result.params.params_hash, "full"),
                  "coordinate": point.coordinate.model_dump(mode="json", exclude_none=True)}
        path = self.zarr_path(point.id)
        sample = spec.metadata.get("sample")
        node = self.node(point.id, {
            "series_id": point.id, "sample": sample, "geometry": geometry, "center": float(result.center),
            "params": series_params(result).model_dump(mode="json"), "params_hash": geometry["params_hash"],
            "coordinate_name": point.coordinate.name, "planned": point.planned,
            "ome_zarr": str(path), "members": [], "rejected": []})
        md = dict(node.metadata)
        problems = _differences(md.get("geometry", geometry), geometry)
        if problems:
            reason = "; ".join(problems)
            message = (f"series {point.id}: scan {spec.run_uid[:8]} (index {point.index}) not added: "
                       f"{reason}; its own reconstruction is kept as {member['recon_key']}")
            log.warning(message)
            rejected = [r for r in md.get("rejected", []) if r.get("raw_uid") != spec.run_uid]
            node.update_metadata(jsonable({"rejected": [*rejected, {**member, "reason": reason}]}))
            self.messages[point.id] = message
            return message
        write_series_zarr(path, point.index, result.volume)
        members = [m for m in md.get("members", []) if m.get("index") != point.index]
        members = sorted([*members, member], key=lambda m: m["index"])
        n_t = max(m["index"] for m in members) + 1
        node.update_metadata(jsonable({"members": members, "n_t": n_t}))
        if self.register_in_place:
            self._register(node, path)
        message = f"series {point.id}: scan {spec.run_uid[:8]} added at t index {point.index}"
        log.info(message)
        self.messages[point.id] = message
        return message

    @staticmethod
    def _register(node: Any, path: Path) -> None:
        """(Re-)register the 4D array in place: its shape grew with the new time point."""
        if "volume" in node:
            node.delete_contents("volume", external_only=False)
        register_zarr_in_place(node, "volume", path / "0", {"axes": list(AXES)}, dims=AXES)
