"""Where the slice viewer's voxels come from fast: whole volumes kept in memory, and Zarr files
read in place when the page runs beside the data folder.

Why: a reconstruction is stored in z slabs (one chunk = 16 full xy planes), so one xz or yz slice
decodes every chunk of the volume, and through Tiled's HTTP API each read also pays a request.
A slider that moves an xz view would re-read the whole volume on every move. A volume up to
``max_volume_bytes`` is therefore read once (one reader at a time per volume, the others wait for
it) and every slice after that is a copy out of memory; all volumes together stay under
``max_bytes`` (least recently used dropped first). Larger volumes are read slice by slice.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np

MiB = 2**20
#: the most memory all cached volumes take, and the largest one volume cached (512^3 float32: 512 MiB)
MAX_CACHE_BYTES, MAX_VOLUME_BYTES = 512 * MiB, 256 * MiB


class VolumeCache:
    """Whole float32 volumes by an identity (key and version), least recently used dropped first."""

    def __init__(self, max_bytes: int = MAX_CACHE_BYTES, max_volume_bytes: int = MAX_VOLUME_BYTES):
        self.max_bytes = max_bytes
        self.max_volume_bytes = min(max_volume_bytes, max_bytes)
        self._volumes: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._loading: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.max_volume_bytes

    def get(self, ident: Hashable) -> np.ndarray | None:
        with self._lock:
            vol = self._volumes.get(ident)
            if vol is not None:
                self._volumes.move_to_end(ident)
            return vol

    def load(self, ident: Hashable, read: Callable[[], np.ndarray]) -> np.ndarray:
        """The volume ``ident``, read by ``read()`` if not held; concurrent callers share one read."""
        vol = self.get(ident)
        if vol is not None:
            return vol
        with self._lock:
            flight = self._loading.setdefault(ident, threading.Lock())
        with flight:
            vol = self.get(ident)
            if vol is not None:
                return vol
            try:
                vol = np.ascontiguousarray(read(), dtype=np.float32)
                vol.flags.writeable = False  # slices are handed out as copies; the cache stays true
                with self._lock:
                    self._volumes[ident] = vol
                    while sum(v.nbytes for v in self._volumes.values()) > self.max_bytes:
                        self._volumes.popitem(last=False)
            finally:
                with self._lock:
                    self._loading.pop(ident, None)
        return vol

    def clear(self) -> None:
        with self._lock:
            self._volumes.clear()


def local_zarr(data_sources: list[dict[str, Any]] | None, folder: Path | None,
               shape: tuple[int, ...], dtype: np.dtype) -> Any | None:
    """The array Tiled describes by ``data_sources``, opened read-only in place when it is one
    Zarr directory inside ``folder`` (the data folder the page runs beside) with Tiled's shape
    and type; None otherwise (the caller reads through Tiled's HTTP API). The path comes from
    Tiled: it is used only when it resolves inside ``folder``."""
    if folder is None or not data_sources or len(data_sources) != 1:
        return None
    source = data_sources[0]
    assets = source.get("assets") or []
    if (source.get("mimetype") != "application/x-zarr" or source.get("parameters")
            or len(assets) != 1 or not assets[0].get("is_directory")):
        return None
    uri = urllib.parse.urlparse(str(assets[0].get("data_uri", "")))
    if uri.scheme != "file" or uri.netloc not in ("", "localhost"):
        return None
    path = Path(urllib.parse.unquote(uri.path)).resolve()
    if not path.is_relative_to(Path(folder).resolve()):
        return None
    try:
        import zarr

        array = zarr.open_array(str(path), mode="r")
    except Exception:  # not there, or not a Zarr array: Tiled's HTTP API says why
        return None
    if tuple(array.shape) != tuple(shape) or np.dtype(array.dtype) != dtype:
        return None
    return array
