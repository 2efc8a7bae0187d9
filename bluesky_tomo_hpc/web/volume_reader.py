"""Reconstruction volumes for the slice viewer: found through Tiled's HTTP API, read from memory,
in place, or through Tiled.

The page asks for one slice per slider move, so a slice must cost no more than one read: the
node's description (its array link, shape, type and Zarr file) is kept per key (complete nodes
only; a node still being written is looked up again each time; concurrent callers share one
lookup, its two requests made at once). A complete volume that fits :class:`VolumeCache` is read
once, whole, and sliced in memory; a larger one is read slice by slice from its Zarr in place when
the page runs beside the data folder (:func:`local_zarr`), else by one
``GET .../array/full/...?slice=`` as raw bytes. Memory stays bounded: the cache's budget, a slice,
a strided sample for the histogram, or a 3D region of at most ``max_side`` per axis.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..results.missing_data import MISSING_DATA_STATUS
from ..results.volume_stats import stored_stats, volume_stats
from .catalog import (
    PLANES,
    UNIT,
    Catalog,
    CatalogError,
    TiledUnavailable,
    check_key,
    levels_for,
    provenance,
    recon_summary,
    voxel_size_um,
)
from .volume_cache import VolumeCache, local_zarr

#: at most this many voxels in one 3D read (256^3 float32 = 64 MiB)
MAX_REGION_VOXELS = 256 ** 3


@dataclass(frozen=True)
class VolumeHandle:
    key: str
    url: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    metadata: dict[str, Any]
    #: the Zarr array read in place (complete nodes beside the data folder), else None
    local: Any = None

    @property
    def ident(self) -> tuple[Any, ...]:
        """This version of the volume (a node replaced under its key is another one)."""
        return self.key, self.url, self.metadata.get("written_at")

    @property
    def float32_bytes(self) -> int:
        return 4 * math.prod(self.shape)


def _dtype(data_type: dict[str, Any]) -> np.dtype:
    order = {"little": "<", "big": ">"}.get(data_type.get("endianness", ""), "|")
    return np.dtype(f"{order}{data_type['kind']}{data_type['itemsize']}")


class VolumeReader:
    """Descriptions, slices, a histogram and 3D regions of the reconstructions in Tiled's
    ``processed`` container at ``tiled_uri()`` (``.../api/v1``), over Tiled's HTTP API.

    A complete node's description and histogram are kept ``ttl_s`` seconds (a retried job may
    replace a node under the same key); one being written is asked for again each time.
    ``data_folder``: the folder of the Tiled this page runs beside, whose Zarr files are read in
    place (None: everything through Tiled's HTTP API).
    """

    def __init__(self, catalog: Catalog, *, api_key: str, tiled_uri: Callable[[], str],
                 ttl_s: float = 30.0, keep: int = 64, data_folder: Path | None = None,
                 volumes: VolumeCache | None = None):
        self.catalog = catalog
        self.api_key = api_key
        self.tiled_uri = tiled_uri
        self.ttl_s = ttl_s
        self.keep = keep
        self.data_folder = data_folder
        self.volumes = volumes if volumes is not None else VolumeCache()
        self._cache: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._flights: dict[tuple[str, str], threading.Lock] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="volume-reader")
        #: look-ups made ahead of the slices (:meth:`info`): a pool of their own, because a
        #: look-up waits on ``_pool`` for its second request
        self._prefetch = ThreadPoolExecutor(max_workers=2, thread_name_prefix="volume-lookup")
        self._http: Any = None

    # -- HTTP -----------------------------------------------------------------------------------
    def _client(self) -> Any:
        import httpx

        if self._http is None:
            headers = {"Accept-Encoding": "identity", "Authorization": f"Apikey {self.api_key}"}
            self._http = httpx.Client(trust_env=False, timeout=60.0, headers=headers)
        return self._http

    def _get(self, url: str, params: dict[str, Any] | None = None, *, what: str) -> Any:
        import httpx

        try:
            r = self._client().get(url, params=params)
        except httpx.HTTPError as exc:
            raise TiledUnavailable(f"Tiled is not reachable: {type(exc).__name__}: {exc}") from exc
        if r.status_code == 404:
            raise CatalogError(f"no {what} in Tiled's '{self.catalog.processed_name}' container")
        if r.status_code == MISSING_DATA_STATUS:  # its data file is gone: Tiled's one line says which
            raise CatalogError(str(r.json().get("detail", "")), MISSING_DATA_STATUS)
        if r.status_code != 200:
            raise CatalogError(f"Tiled answered HTTP {r.status_code} for {what}", 502)
        return r

    def _hit(self, kind: str, key: str) -> Any:
        with self._lock:
            hit = self._cache.get((kind, key))
            return hit[1] if hit is not None and time.monotonic() - hit[0] < self.ttl_s else None

    def _cached(self, kind: str, key: str, make: Callable[[], Any], keep: Callable[[Any], bool]) -> Any:
        """``make()``'s value, kept when ``keep`` says so; callers asking at once share one make."""
        hit = self._hit(kind, key)
        if hit is not None:
            return hit
        with self._lock:
            flight = self._flights.setdefault((kind, key), threading.Lock())
        with flight:
            hit = self._hit(kind, key)
            if hit is not None:
                return hit
            try:
                value = make()
                if keep(value):
                    with self._lock:
                        self._cache[(kind, key)] = (time.monotonic(), value)
                        while len(self._cache) > self.keep:
                            self._cache.popitem(last=False)
            finally:
                with self._lock:
                    self._flights.pop((kind, key), None)
        return value

    # -- lookup ---------------------------------------------------------------------------------
    def describe(self, key: str) -> dict[str, Any]:
        """The node's metadata and its arrays (name -> shape, type, link, data sources): two
        requests, made at once."""
        check_key(key, "reconstruction")

        def make() -> dict[str, Any]:
            base = f"{self.tiled_uri().rstrip('/')}"
            path = f"{self.catalog.processed_name}/{key}"
            what = f"reconstruction {key!r}"
            asked = self._pool.submit(self._get, f"{base}/metadata/{path}", what=what)
            items = self._get(f"{base}/search/{path}", {"fields": "structure", "page[limit]": 100,
                                                        "include_data_sources": "true"},
                              what=what).json()["data"]
            md = asked.result().json()["data"]["attributes"]["metadata"]
            arrays = {it["id"]: {"shape": [int(n) for n in it["attributes"]["structure"]["shape"]],
                                 "dtype": _dtype(it["attributes"]["structure"]["data_type"]),
                                 "url": it["links"]["full"],
                                 "data_sources": it["attributes"].get("data_sources")}
                      for it in items if (it.get("attributes") or {}).get("structure", {}).get("shape")}
            md = dict(md or {})
            vol = arrays.get("volume")
            if vol is not None and md.get("state", "complete") == "complete":
                # read in place only once complete: a Zarr being written reads missing chunks as 0
                vol["local"] = local_zarr(vol["data_sources"], self.data_folder, tuple(vol["shape"]),
                                          vol["dtype"])
            return {"metadata": md, "arrays": arrays}

        return self._cached("describe", key, make,
                            lambda d: d["metadata"].get("state", "complete") == "complete")

    def info(self, key: str) -> dict[str, Any]:
        """What the page shows of a reconstruction: summary, volume shape and levels, units,
        provenance, and the volume's histogram (:meth:`stats`; left out when it cannot be read
        yet, the page then asks for it alone and shows why): one answer, so opening a
        reconstruction waits for one request before its slices.

        A complete node the scans table listed a moment ago whose histogram was stored with it
        (:mod:`~bluesky_tomo_hpc.results.volume_stats`) is answered from that listing: no request
        to Tiled; the look-up its slices need starts at once, in the background."""
        check_key(key, "reconstruction")
        if self._hit("describe", key) is None:
            quick = self._listed_info(key)
            if quick is not None:
                return quick
        d = self.describe(key)
        md = d["metadata"]
        out = recon_summary(key, md)
        out["previews"] = [n.removeprefix("preview_") for n in d["arrays"] if n.startswith("preview_")]
        if "volume" in d["arrays"]:
            shape = d["arrays"]["volume"]["shape"]
            out["volume"] = {"shape": shape, "levels": levels_for(shape)}
            if len(shape) == 3:
                try:
                    out["stats"] = self.stats(key)
                except CatalogError:
                    pass
        return self._with_provenance(out, md)

    def _with_provenance(self, out: dict[str, Any], md: dict[str, Any]) -> dict[str, Any]:
        out.update(container=self.catalog.processed_name, unit=UNIT, voxel_size_um=voxel_size_um(md),
                   provenance=provenance(md))
        return out

    def _listed_info(self, key: str) -> dict[str, Any] | None:
        """:meth:`info` from the catalog's last listing, when that saw the node complete with a
        stored histogram; else None."""
        md = self.catalog.listed_metadata(key, self.ttl_s)
        st = stored_stats(md)
        if md is None or st is None or md.get("state", "complete") != "complete":
            return None
        self._prefetch.submit(self._describe_quietly, key)
        out = recon_summary(key, md)
        planes = md.get("preview_planes")
        out["previews"] = [p for p in PLANES if isinstance(planes, list) and p in planes]
        shape = st.pop("shape")
        out["volume"] = {"shape": shape, "levels": levels_for(shape)}
        out["stats"] = {**st, "state": "complete"}
        return self._with_provenance(out, md)

    def _describe_quietly(self, key: str) -> None:
        """Look ``key`` up ahead of its slices; a failure is theirs to report."""
        try:
            self.describe(key)
        except CatalogError:
            pass

    def handle(self, key: str) -> VolumeHandle:
        d = self.describe(key)
        md = d["metadata"]
        vol = d["arrays"].get("volume")
        if vol is None:
            if md.get("state") == "writing":
                raise CatalogError(
                    f"reconstruction {key} is still being written; its volume is not there yet", 409)
            raise CatalogError(f"reconstruction {key} has no volume (kind {md.get('kind')!r}: slices only)")
        if len(vol["shape"]) != 3:
            raise CatalogError(f"reconstruction {key}: its volume has {len(vol['shape'])} axes, not 3", 422)
        return VolumeHandle(key, vol["url"], tuple(vol["shape"]), vol["dtype"], md,  # type: ignore[arg-type]
                            vol.get("local"))

    def _in_memory(self, h: VolumeHandle) -> np.ndarray | None:
        """The whole volume from the cache, read first if it is complete and fits; else None."""
        if h.metadata.get("state", "complete") != "complete" or not self.volumes.fits(h.float32_bytes):
            return None
        if h.local is not None:
            return self.volumes.load(h.ident, lambda: np.asarray(h.local[...]))
        nz = h.shape[0]
        slab = max(1, (16 * 2**20) // max(1, 4 * h.shape[1] * h.shape[2]))  # 16 MiB per request
        every = (slice(None), slice(None))
        return self.volumes.load(h.ident, lambda: np.concatenate(
            [self._request(h, (slice(z, min(nz, z + slab)), *every)) for z in range(0, nz, slab)]))

    def _read(self, h: VolumeHandle, sel: tuple[slice | int, ...]) -> np.ndarray:
        """``volume[sel]``: out of memory, from the Zarr in place, or as one request to Tiled;
        ``sel`` holds ints and positive-step slices."""
        vol = self._in_memory(h)
        if vol is not None:
            return np.array(vol[sel], dtype=np.float32)
        if h.local is not None:
            return np.asarray(h.local[sel]).astype(np.float32, copy=False)
        return self._request(h, sel)

    def _request(self, h: VolumeHandle, sel: tuple[slice | int, ...]) -> np.ndarray:
        """``volume[sel]`` as one request to Tiled."""
        shape = []
        parts = []
        for s, n in zip(sel, h.shape, strict=True):
            if isinstance(s, int):
                parts.append(str(s))
                continue
            start, stop, step = s.indices(n)
            shape.append(len(range(start, stop, step)))
            parts.append(f"{start}:{stop}:{step}")
        try:
            r = self._get(h.url, {"slice": ",".join(parts)}, what=f"volume of {h.key!r}")
        except CatalogError as exc:
            if h.metadata.get("state") == "writing" and not isinstance(exc, TiledUnavailable):
                raise CatalogError(f"reconstruction {h.key} is still being written; that part is not "
                                   "there yet", 409) from exc
            raise
        data = np.frombuffer(r.content, dtype=h.dtype)
        if data.size != math.prod(shape):
            raise CatalogError(f"Tiled sent {data.size} values for {h.key} [{','.join(parts)}], "
                               f"expected {math.prod(shape)}", 502)
        return data.reshape(shape).astype(np.float32, copy=False)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._prefetch.shutdown(wait=False)
        self.volumes.clear()
        if self._http is not None:
            self._http.close()

    # -- what the page reads --------------------------------------------------------------------
    def slice(self, key: str, plane: str, index: int | None,
              level: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
        """One slice at a multiscale level: level ``L`` keeps every ``2**L``-th voxel."""
        if plane not in PLANES:
            raise CatalogError(f"plane {plane!r} unknown: xy, xz or yz", 400)
        h = self.handle(key)
        levels = levels_for(list(h.shape))
        if not 0 <= level < levels:
            raise CatalogError(f"level {level} out of range: this volume has levels 0-{levels - 1}", 400)
        axis = PLANES[plane]
        n = h.shape[axis]
        index = n // 2 if index is None else int(index)
        if not 0 <= index < n:
            raise CatalogError(f"{plane} index {index} out of range 0-{n - 1}", 400)
        step = 2 ** level
        sel: list[slice | int] = [slice(None, None, step)] * 3
        sel[axis] = index
        data = self._read(h, tuple(sel))
        return data, {"shape": list(h.shape), "index": index, "level": level, "levels": levels,
                      "rows": int(data.shape[0]), "cols": int(data.shape[1])}

    def stats(self, key: str) -> dict[str, Any]:
        """A histogram of the volume and its 0.5-99.5 % window (the window the views share): the
        one stored with the result when it was written, else computed from five strided xy
        slices (:func:`~bluesky_tomo_hpc.results.volume_stats.volume_stats`, one request) and
        kept like a description (results written before histograms were stored)."""
        return self._cached("stats", key, lambda: self._stats(key),
                            lambda st: st.get("state", "complete") == "complete")

    def _stats(self, key: str) -> dict[str, Any]:
        h = self.handle(key)
        state = h.metadata.get("state", "complete")
        stored = stored_stats(h.metadata) if state == "complete" else None
        if stored is not None and tuple(stored.pop("shape")) == h.shape:
            return {**stored, "state": state}

        def read(zs: range, step: int) -> np.ndarray:
            every = slice(None, None, step)
            return self._read(h, (slice(zs.start, zs.stop, zs.step), every, every))

        st = volume_stats(h.shape, read)  # type: ignore[arg-type]
        st.pop("shape")
        return {**st, "state": state}

    def region(self, key: str, box: tuple[int, int, int, int, int, int] | None = None,
               max_side: int = 128) -> tuple[np.ndarray, dict[str, Any]]:
        """The volume (or ``box`` = z0, z1, y0, y1, x0, x1 of it) strided to at most ``max_side``
        per axis, read slab by slab; ``step`` 1 means full resolution."""
        h = self.handle(key)
        if h.metadata.get("state") == "writing":
            raise CatalogError(
                f"reconstruction {key} is still being written; try the 3D view when it is complete", 409)
        bounds = [(0, n) for n in h.shape] if box is None else list(zip(box[0::2], box[1::2], strict=True))
        for (a, b), n, name in zip(bounds, h.shape, "zyx", strict=True):
            if not 0 <= a < b <= n:
                raise CatalogError(f"region {name} {a}-{b} is not inside 0-{n}", 400)
        step = max(1, math.ceil(max(b - a for a, b in bounds) / max_side))
        voxels = math.prod(len(range(a, b, step)) for a, b in bounds)
        if voxels > MAX_REGION_VOXELS:
            raise CatalogError(f"region of {voxels} voxels is over the {MAX_REGION_VOXELS} limit", 400)
        (z0, z1), (y0, y1), (x0, x1) = bounds
        slab = max(1, 64 // step) * step
        parts = [self._read(h, (slice(z, min(z1, z + slab), step), slice(y0, y1, step), slice(x0, x1, step)))
                 for z in range(z0, z1, slab)]
        vol = np.concatenate(parts)
        return vol, {"step": step, "box": [z0, z1, y0, y1, x0, x1], "shape": list(vol.shape)}
