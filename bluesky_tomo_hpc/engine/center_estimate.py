"""What a centre finder answers, how far to trust it, and what is used when it cannot be trusted.

Convention everywhere: the centre is a 0-based detector column index; an axis in the middle of
an N-pixel detector is at (N - 1) / 2. TomoPy's ``find_center_pc`` answers 0.5 px higher.
Every automatic estimate carries ``details["uncertainty_px"]``; its confidence is a fixed function
of that (:func:`confidence_from_uncertainty`), so one threshold means the same for every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bluesky_tomo_hpc.engine.preprocess import to_unbinned


@dataclass(frozen=True)
class CenterEstimate:
    """A rotation-axis estimate: ``center`` (pixel-index convention), ``confidence`` in [0, 1]
    (how much an automatic pipeline may trust it), the ``method`` and its diagnostics."""

    center: float
    confidence: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.center):
            raise ValueError(f"CenterEstimate: centre must be finite, got {self.center}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"CenterEstimate: confidence must be in [0, 1], got {self.confidence}")


#: Below this confidence an automatic centre is not used as is: warning, contact sheet, fallback.
CONFIDENCE_THRESHOLD = 0.5
#: The confidence is exp(-u^2 / (2 s^2)) of the estimated uncertainty u (px), with s this scale:
#: confidence 0.5 <=> u = 0.59 px, 0.9 <=> u = 0.23 px (calibration: docs/how-to/center.md).
UNCERTAINTY_SCALE_PX = 0.5


def confidence_from_uncertainty(uncertainty_px: float) -> float:
    """Map an estimated centre uncertainty (px) to a confidence in [0, 1]."""
    if not math.isfinite(uncertainty_px):
        return 0.0
    return float(math.exp(-0.5 * (uncertainty_px / UNCERTAINTY_SCALE_PX) ** 2))


#: An uncertainty this large a share of the detector width means the data hold no evidence of
#: the axis at all (no sample, a flat field): only then may a guess replace the estimate.
NO_EVIDENCE_SHARE = 1.0 / 8.0


def resolve_uncertain_center(
    est: CenterEstimate, nx: int, fallback: float | None = None, binning: int = 1
) -> CenterEstimate:
    """What an automatic centre whose confidence is below :data:`CONFIDENCE_THRESHOLD` uses,
    never silently (``details``: ``uncertain``, ``warning``, ``estimate``, ``fallback``; the
    warning names unbinned columns, ``binning``), and never moving away from the data's evidence:

    * the **estimate** itself: the value the data support best;
    * the **last confident centre of this detector** (``fallback``, same columns) instead, when
      it fits the data as well: it lies within the estimate's uncertainty (at least 0.5 px);
    * a guess (``fallback``, else the detector middle) only where the data hold no evidence:
      ``details["no_evidence"]`` (the finder saw only noise), or an uncertainty that is
      non-finite or above :data:`NO_EVIDENCE_SHARE` of the width.

    Confident, manual and given centres pass unchanged."""
    if est.confidence >= CONFIDENCE_THRESHOLD or est.method in ("manual", "given"):
        return est
    u_b = float(est.details.get("uncertainty_px", float("inf")))
    no_evidence = (bool(est.details.get("no_evidence")) or not math.isfinite(u_b)
                   or u_b > NO_EVIDENCE_SHARE * nx)
    if fallback is not None and (no_evidence or abs(float(fallback) - est.center) <= max(u_b, 0.5)):
        use, source = float(fallback), "last confident centre of this detector" + (
            "" if no_evidence else " (it fits the data as well as the estimate)")
    elif no_evidence and not est.details.get("half_acquisition"):
        use, source = (nx - 1) / 2.0, "detector middle (the data show no axis)"
    else:
        use, source = est.center, "estimate (the value the data support best)"
    u = u_b * binning
    warning = (f"centre uncertain: the automatic centre {to_unbinned(est.center, binning):.2f} px "
               f"({est.method}) has confidence {est.confidence:.2f} < {CONFIDENCE_THRESHOLD} (uncertainty "
               f"{u:.2f} px); using the {source}, {to_unbinned(use, binning):.2f} px: check it with "
               "`recon --center try`")
    details = {**est.details, "uncertain": True, "warning": warning, "estimate": est.center,
               "estimate_method": est.method, "fallback": source}
    return CenterEstimate(use, est.confidence, "fallback", details)
