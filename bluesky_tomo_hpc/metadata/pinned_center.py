"""Which rotation centre a scan is reconstructed with when its metadata fixes one.

Why: a time series must be reconstructed with *one* centre, or a drift of the automatic search
reads as motion of the sample; and a plan that found the centre on a quick scan wants the main
scan reconstructed with it. Two rules, applied only where the settings say ``center: auto``:

1. ``start["tomo"]["rotation_center"]`` (0-based detector column) is used as given;
2. the scans of a series (``start["series"]["id"]``) use the centre of the series' first
   successful reconstruction.

The parameters, and so the ``params_hash`` that re-processing uses to skip finished runs, stay
those requested; the result records the centre and ``center_method: "given"``.

The centre is chosen when the reconstruction *starts* (on the service thread, in scan order),
so the second scan of a series sees the first one's centre even when it stopped before the
first reconstruction finished.
"""

from __future__ import annotations

import threading
from typing import Any

from ..engine.params import ReconParams
from .series_point import series_point

#: series remembered (their first centre); old ones are dropped first
MAX_SERIES = 256


class PinnedCenters:
    """Chooses the centre of each scan (:meth:`center_for`) and remembers series centres
    (:meth:`remember`, a ReconService listener)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[str, float] = {}

    def pinned(self, metadata: dict[str, Any]) -> float | None:
        tomo = metadata.get("tomo") if isinstance(metadata, dict) else None
        explicit = tomo.get("rotation_center") if isinstance(tomo, dict) else None
        if isinstance(explicit, int | float) and not isinstance(explicit, bool):
            return float(explicit)
        point = series_point(metadata)
        if point is None:
            return None
        with self._lock:
            return self._series.get(point.id)

    def center_for(self, spec: Any, params: ReconParams) -> float | None:
        """The pinned centre of this scan, or None (no pin, or the parameters fix a centre)."""
        return self.pinned(spec.metadata) if params.center == "auto" else None

    def remember(self, outcome: Any) -> None:
        spec = getattr(outcome, "spec", None)
        point = series_point(spec.metadata) if spec is not None else None
        if point is None or not outcome.ok or outcome.center is None:
            return
        with self._lock:
            self._series.setdefault(point.id, float(outcome.center))
            while len(self._series) > MAX_SERIES:
                self._series.pop(next(iter(self._series)))
