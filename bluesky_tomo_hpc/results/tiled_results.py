"""Reconstructions as Tiled nodes beside the raw runs.

Layout, under a ``processed`` container (created on first use)::

    processed/
      <raw_uid>-<params_hash>-<kind>    container, specs=["TomoReconstruction"]
        metadata: raw_uid, params, params_hash, kind, center, center_confidence, versions, timings, ...
        volume        (nz, ny, nx) float32, chunked by slabs, lazily sliceable
        preview_xy    three orthogonal slices through the volume (or the live preview)
        preview_xz
        preview_yz

Search with ``Key("raw_uid") == uid`` and ``Key("params_hash") == h`` (see
:func:`find_reconstructions`). A volume already on a disk the server can read (a batch job's Zarr)
is *registered in place*; otherwise it is uploaded slab by slab, so memory stays bounded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.params import ReconParams
from .provenance import jsonable, software_versions
from .volume_stats import STATS_KEY, stats_of_array

log = logging.getLogger(__name__)

RECON_SPEC = "TomoReconstruction"
PREVIEW_KEYS = ("xy", "xz", "yz")


def processed_container(client: Any, name: str = "processed") -> Any:
    """The container that holds reconstructions; created when missing."""
    if name in client:
        return client[name]
    try:
        return client.create_container(name, metadata={"description": "tomography reconstructions"})
    except Exception:
        # another writer may have created it between the check and the create
        if name in client:
            return client[name]
        raise


def recon_key(raw_uid: str, params_hash: str, kind: str) -> str:
    """The Tiled key of a reconstruction; the raw uid (outside data) passes the one name rule."""
    from ..model import safe_component

    return f"{safe_component(raw_uid, 'run uid')}-{params_hash}-{kind}"


def preview_slices(
    volume: Any, positions: tuple[float, float, float] = (0.5, 0.5, 0.5)
) -> dict[str, np.ndarray]:
    """Three orthogonal slices (xy at z, xz at y, yz at x) of a (nz, ny, nx) array-like."""
    nz, ny, nx = volume.shape
    iz, iy, ix = (min(n - 1, int(round(p * (n - 1)))) for p, n in zip(positions, (nz, ny, nx), strict=True))
    return {
        "xy": np.asarray(volume[iz, :, :], dtype=np.float32),
        "xz": np.asarray(volume[:, iy, :], dtype=np.float32),
        "yz": np.asarray(volume[:, :, ix], dtype=np.float32),
    }


def _clean_metadata(md: Mapping[str, Any]) -> dict[str, Any]:
    """Tiled metadata must be JSON/msgpack-able: numpy scalars and tuples are converted."""
    return jsonable(dict(md))


def _zarr_structure(path: Path, dims: tuple[str, ...] = ("z", "y", "x")) -> Any:
    import zarr
    from tiled.structures.array import ArrayStructure, BuiltinDtype

    z = zarr.open_array(str(path), mode="r")
    chunks = tuple(
        tuple(min(c, n - i) for i in range(0, n, c)) for n, c in zip(z.shape, z.chunks, strict=True)
    )
    return ArrayStructure(
        data_type=BuiltinDtype.from_numpy_dtype(np.dtype(z.dtype)),
        shape=tuple(z.shape),
        chunks=chunks,
        dims=dims,
    )


def register_zarr_in_place(
    container: Any, key: str, path: Path, metadata: Mapping[str, Any] | None = None,
    dims: tuple[str, ...] = ("z", "y", "x"),
) -> Any:
    """Register an existing Zarr array as an external node (no copy); the server must be able
    to read ``path`` (its ``readable_storage``)."""
    from tiled.structures.core import StructureFamily
    from tiled.structures.data_source import Asset, DataSource, Management
    from tiled.utils import ensure_uri

    source = DataSource(
        management=Management.external,
        mimetype="application/x-zarr",
        structure_family=StructureFamily.array,
        structure=_zarr_structure(path, dims),
        parameters={},
        assets=[Asset(data_uri=ensure_uri(str(path)), is_directory=True, parameter="data_uri")],
    )
    return container.new(StructureFamily.array, [source], key=key, metadata=dict(metadata or {}))


def upload_volume(container: Any, key: str, volume: Any, *, slab: int = 16,
                  metadata: Mapping[str, Any] | None = None) -> Any:
    """Upload a (nz, ny, nx) array-like slab by slab (chunk-aligned), never holding it whole."""
    from tiled.structures.array import ArrayStructure, BuiltinDtype
    from tiled.structures.core import StructureFamily
    from tiled.structures.data_source import DataSource

    nz, ny, nx = (int(n) for n in volume.shape)
    slab = max(1, min(slab, nz))
    bounds = list(range(0, nz, slab)) + [nz]
    structure = ArrayStructure(
        data_type=BuiltinDtype.from_numpy_dtype(np.dtype(np.float32)),
        shape=(nz, ny, nx),
        chunks=(tuple(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)), (ny,), (nx,)),
        dims=("z", "y", "x"),
    )
    node = container.new(
        StructureFamily.array,
        [DataSource(structure=structure, structure_family=StructureFamily.array)],
        key=key,
        metadata=dict(metadata or {}),
    )
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        node.write_block(np.ascontiguousarray(volume[a:b], dtype=np.float32), block=(i, 0, 0))
    return node


def write_reconstruction(
    container: Any,
    *,
    raw_uid: str,
    params: ReconParams,
    volume: Any | None = None,
    volume_zarr: str | Path | None = None,
    previews: Mapping[str, np.ndarray] | None = None,
    metadata: Mapping[str, Any] | None = None,
    kind: str = "full",
    register_in_place: bool = False,
) -> Any:
    """Write one reconstruction as a node linked to ``raw_uid``; returns the node.

    ``volume`` (an array-like) is uploaded in slabs; ``volume_zarr`` (a path) is registered in
    place with ``register_in_place=True`` (the caller knows the server's ``readable_storage``
    holds it: Tiled only checks that when the data is read) and uploaded otherwise. Previews
    default to three orthogonal slices through the volume's middle. A node
    of the same key (same run, params and kind) is replaced, so a retried job is idempotent.
    Its metadata ``state`` is ``writing`` until the volume and previews are all written, then
    ``complete`` (readers such as the web page say so instead of failing on missing blocks).
    """
    if volume is not None and volume_zarr is not None:
        raise ValueError("give either volume or volume_zarr, not both")
    key = recon_key(raw_uid, params.params_hash, kind)
    md = {
        "raw_uid": raw_uid,
        "kind": kind,
        "params": params.model_dump(mode="json"),
        "params_hash": params.params_hash,
        "versions": software_versions(),
        "written_at": time.time(),
        **dict(metadata or {}),
        "state": "writing",
    }
    md = _clean_metadata(md)
    if key in container:
        log.info("replacing existing reconstruction node %s", key)
        container.delete_contents(key, recursive=True, external_only=False)
    node = container.create_container(key, metadata=md, specs=[RECON_SPEC])

    source_volume: Any = volume
    if volume_zarr is not None:
        import zarr

        zpath = Path(volume_zarr)
        source_volume = zarr.open_array(str(zpath), mode="r")
        if register_in_place:
            register_zarr_in_place(node, "volume", zpath, {"registered_from": str(zpath)})
        else:
            upload_volume(node, "volume", source_volume)
    elif volume is not None:
        upload_volume(node, "volume", volume)

    if previews is None and source_volume is not None:
        previews = preview_slices(source_volume)
    for name, arr in (previews or {}).items():
        node.write_array(np.asarray(arr, dtype=np.float32), key=f"preview_{name}",
                         dims=_preview_dims(name))
    done: dict[str, Any] = {"state": "complete", "preview_planes": sorted(previews or {})}
    if source_volume is not None and len(source_volume.shape) == 3:
        done[STATS_KEY] = _stats_or_none(source_volume, key)
    node.update_metadata({k: v for k, v in done.items() if v is not None})
    return node


def _stats_or_none(volume: Any, key: str) -> dict[str, Any] | None:
    """The volume's histogram for the web page (:mod:`.volume_stats`); None when it cannot be
    read: the result is complete without it (the page computes it when it opens the node)."""
    try:
        return stats_of_array(volume)
    except Exception as exc:  # a stored histogram only saves the page a read
        log.warning("reconstruction %s: its histogram was not stored (%s: %s)", key, type(exc).__name__, exc)
        return None


def _preview_dims(name: str) -> tuple[str, str]:
    return {"xy": ("y", "x"), "xz": ("z", "x"), "yz": ("z", "y")}.get(name, ("row", "col"))  # type: ignore[return-value]


def find_reconstructions(
    container: Any,
    raw_uid: str | None = None,
    params_hash: str | None = None,
    kind: str | None = None,
) -> list[Any]:
    """Reconstruction nodes matching the given run / parameters hash / kind, newest first."""
    from tiled.queries import Key

    results = container
    if raw_uid is not None:
        results = results.search(Key("raw_uid") == raw_uid)
    if params_hash is not None:
        results = results.search(Key("params_hash") == params_hash)
    if kind is not None:
        results = results.search(Key("kind") == kind)
    nodes = list(results.values())
    nodes.sort(key=lambda n: n.metadata.get("written_at", 0), reverse=True)
    return nodes


def latest_reconstruction(container: Any, raw_uid: str, kind: str | None = None) -> Any | None:
    found = find_reconstructions(container, raw_uid=raw_uid, kind=kind)
    return found[0] if found else None


def runs_without_reconstruction(container: Any, uids: Iterable[str]) -> list[str]:
    """Of ``uids``, those with no reconstruction of any parameters."""
    return [u for u in uids if not find_reconstructions(container, raw_uid=u)]
