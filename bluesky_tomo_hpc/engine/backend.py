"""Array-module selection: one code path for NumPy and CuPy.

Engine functions call :func:`get_array_module` on their input and use the returned module
(``numpy`` or ``cupy``) for every operation, so a CuPy array in gives a CuPy array out.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

try:  # CuPy is optional (the ``gpu`` extra); import errors on machines without CUDA are normal
    import cupy as _cp  # type: ignore[import-not-found]

    try:
        _CUPY_USABLE = _cp.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver / no device
        _CUPY_USABLE = False
except Exception:  # pragma: no cover - depends on the machine
    _cp = None
    _CUPY_USABLE = False


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return _CUPY_USABLE


def get_array_module(*arrays: Any) -> ModuleType:
    """``cupy`` if any argument is a CuPy array, else ``numpy``."""
    if _cp is not None:
        for a in arrays:
            if isinstance(a, _cp.ndarray):
                return _cp
    return np


def scipy_for(xp: ModuleType) -> ModuleType:
    """``cupyx.scipy`` for CuPy, ``scipy`` for NumPy (for ndimage/signal helpers)."""
    if xp is np:
        import scipy

        return scipy
    import cupyx.scipy  # type: ignore[import-not-found]

    return cupyx.scipy


def to_numpy(a: Any) -> np.ndarray:
    """A host NumPy array whatever the input lives on."""
    if _cp is not None and isinstance(a, _cp.ndarray):
        return _cp.asnumpy(a)
    return np.asarray(a)


def choose_device(requested: str = "auto") -> ModuleType:
    """Array module for a ``ReconParams.device`` value; ``gpu`` without CuPy is an error."""
    if requested == "cpu":
        return np
    if requested == "gpu":
        if not _CUPY_USABLE:
            raise RuntimeError("device='gpu' requested but CuPy with a CUDA device is not available")
        return _cp
    return _cp if _CUPY_USABLE else np
