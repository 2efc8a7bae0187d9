"""Dark and flat frames taken in a run of their own (NSLS-II HEX ``tomo_dark_flat``).

A projection run names its dark/flat run by uid. The document router keeps the frames of the
dark/flat runs it saw recently in a small LRU (they are few and small); for a uid it did not
see (the callback started after that run, or a replay), a *resolver* fetches them, e.g. from
the Tiled catalog that TiledWriter fills.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ..model import FrameBatch, FrameRole

__all__ = ["DarkFlatCache", "DarkFlatResolver", "DarkFlatSet"]


@dataclass(frozen=True)
class DarkFlatSet:
    """The dark and flat frames of one dark/flat run, as the batches they arrived in."""

    uid: str
    batches: tuple[FrameBatch, ...]

    @classmethod
    def from_arrays(cls, uid: str, darks: np.ndarray | None, flats: np.ndarray | None, *,
                    dark_times: np.ndarray | None = None,
                    flat_times: np.ndarray | None = None) -> DarkFlatSet:
        batches = []
        for role, frames, times in ((FrameRole.DARK, darks, dark_times),
                                    (FrameRole.FLAT, flats, flat_times)):
            if frames is not None and len(frames):
                frames = np.asarray(frames)
                batches.append(FrameBatch(role=role, indices=np.arange(len(frames)), frames=frames,
                                          timestamps=times, run_uid=uid))
        return cls(uid=uid, batches=tuple(batches))

    def count(self, role: FrameRole) -> int:
        return sum(len(b) for b in self.batches if b.role is role)

    def for_run(self, run_uid: str) -> Iterable[FrameBatch]:
        """The batches re-labelled as belonging to the projection run that uses them."""
        for batch in self.batches:
            yield dataclasses.replace(batch, run_uid=run_uid)


#: uid of a dark/flat run -> its frames, or None when it does not know that run
DarkFlatResolver = Callable[[str], DarkFlatSet | None]


class DarkFlatCache:
    """Thread-safe LRU of the most recent dark/flat runs, by run uid."""

    def __init__(self, maxsize: int = 8):
        self.maxsize = maxsize
        self._items: OrderedDict[str, DarkFlatSet] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, item: DarkFlatSet) -> None:
        with self._lock:
            self._items[item.uid] = item
            self._items.move_to_end(item.uid)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def get(self, uid: str) -> DarkFlatSet | None:
        with self._lock:
            item = self._items.get(uid)
            if item is not None:
                self._items.move_to_end(uid)
            return item

    def __contains__(self, uid: object) -> bool:
        with self._lock:
            return uid in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
