"""Optional TomoPy back end behind the same :class:`ReconParams` (batch sites that trust it).

Why an adapter: facilities validate against TomoPy; ``engine="tomopy"`` lets them reproduce
its numbers inside this pipeline. TomoPy is not a dependency: ``engine="auto"`` uses it only
where it imports, otherwise the native engine. Sinograms are edge-padded to 2 n before TomoPy
sees them (TomoPy's own padding does not pad power-of-two widths, so its slices wrap around).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..extras import MissingPackage, installed, require
from .filters import padded_width
from .params import ReconParams

#: what asks for TomoPy, in the words of the setting
TOMOPY_FEATURE = "the TomoPy engine (engine: tomopy; or use engine: native or auto)"

#: our filter names -> TomoPy gridrec filter names
_TOMOPY_FILTERS = {
    "none": "none", "ramp": "ramlak", "shepp": "shepp", "cosine": "cosine", "hann": "hann",
    "hamming": "hamming", "parzen": "parzen", "butterworth": "butterworth",
}


def tomopy_available() -> bool:
    """True when ``import tomopy`` would find the package (not imported here: it is slow)."""
    return installed("tomopy")


def resolve_engine(params: ReconParams) -> str:
    """``"native"`` or ``"tomopy"`` for ``params.engine``; ``tomopy`` without TomoPy is an error."""
    if params.engine == "native":
        return "native"
    if params.engine == "tomopy":
        if not tomopy_available():
            raise MissingPackage(TOMOPY_FEATURE, "tomopy")
        return "tomopy"
    return "tomopy" if tomopy_available() else "native"


def reconstruct_tomopy(sino: Any, theta: Any, center: float, params: ReconParams,
                       *, ncore: int | None = None) -> np.ndarray:
    """Sinograms ``(nz, n_angles, nx)`` -> ``(nz, nx, nx)`` float32 with TomoPy.

    ``algorithm="fourier"`` runs gridrec, ``"fbp"`` TomoPy's fbp. ``center`` is the 0-based
    pixel-index axis; TomoPy's own convention can differ by up to half a pixel for some routines.
    """
    tomopy = require("tomopy", TOMOPY_FEATURE)

    sino = np.asarray(sino, dtype=np.float32)
    nz, _, nx = sino.shape
    n_pad = padded_width(nx, params.pad)
    left = (n_pad - nx) // 2
    padded = np.pad(sino, ((0, 0), (0, 0), (left, n_pad - nx - left)), mode="edge")
    tomo = np.ascontiguousarray(padded.transpose(1, 0, 2))
    algorithm = "gridrec" if params.algorithm == "fourier" else "fbp"
    rec = tomopy.recon(
        tomo, np.asarray(theta, dtype=np.float32), center=center + left, algorithm=algorithm,
        filter_name=_TOMOPY_FILTERS[params.filter_name],
        filter_par=[params.filter_cutoff, float(params.butterworth_order)], ncore=ncore,
    )
    return np.ascontiguousarray(rec[:, left : left + nx, left : left + nx], dtype=np.float32)
