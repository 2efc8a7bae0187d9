"""Finding the dark/flat run of a projection run when the router did not see it live.

The usual case: the callback (or the 0MQ worker) was started after the dark/flat run, or a run
is re-processed from the catalog. TiledWriter has then stored the dark/flat run in Tiled, and
its frames are read from there: ``run[stream][detector]`` (BlueskyRun v3 layout), falling back
to the legacy ``run.v2[stream]["data"][detector]``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..model import TomoDataError
from .darkflat import DarkFlatResolver, DarkFlatSet
from .recognise import DEFAULT_PRESETS, recognise

log = logging.getLogger(__name__)

__all__ = ["tiled_dark_flat_resolver"]


def _read_frames(run: Any, stream: str, key: str) -> np.ndarray | None:
    try:
        node = run[stream][key]
    except KeyError:
        try:
            node = run.v2[stream]["data"][key]
        except (KeyError, AttributeError):
            return None
    frames = np.asarray(node.read())
    if frames.ndim == 4:  # (events, collections_per_event, ny, nx) from ophyd-async detectors
        frames = frames.reshape(-1, *frames.shape[-2:])
    if frames.ndim != 3:
        raise TomoDataError(f"{stream}/{key} has shape {frames.shape}; expected (n, ny, nx) frames")
    return frames


def tiled_dark_flat_resolver(catalog: Any, *, presets: Any = None) -> DarkFlatResolver:
    """A resolver reading dark/flat runs from a Tiled catalog of Bluesky runs (by uid).

    The dark/flat run describes itself (``start["tomo"]``, layout "dark_flat", or a preset),
    which names its detector key and streams. Returns None for a uid the catalog lacks.
    """

    def resolve(uid: str) -> DarkFlatSet | None:
        try:
            run = catalog[uid]
        except KeyError:
            return None
        start = dict(run.metadata.get("start", {}))
        layout = recognise(start, DEFAULT_PRESETS if presets is None else presets)
        if layout is None:
            raise TomoDataError(f"run {uid} in the catalog is not a tomography dark/flat run")
        arrays: dict[str, np.ndarray | None] = {}
        for role in ("dark", "flat"):
            stream = layout.streams.get(role)
            if not stream or stream not in run:
                arrays[role] = None
                continue
            key = layout.detector
            if key is None:  # preset without a detector name: the stream's first image key
                data_keys = run[stream].metadata.get("data_keys", {})
                key = next((k for k, dk in data_keys.items() if len(dk.get("shape") or []) >= 2),
                           None)
            arrays[role] = _read_frames(run, stream, key) if key else None
        if arrays["dark"] is None and arrays["flat"] is None:
            raise TomoDataError(f"run {uid} in the catalog holds neither dark nor flat frames")
        log.info("dark/flat run %s read from the catalog", uid)
        return DarkFlatSet.from_arrays(uid, arrays["dark"], arrays["flat"])

    return resolve
