"""Rotation-axis (centre) finding: the parameter that most often spoils an automatic reconstruction.

:func:`find_center` dispatches on ``ReconParams.center_method``; ``auto`` registers the two
half-turns of a 360-degree scan (:mod:`.halfturn`, also for half acquisitions), or runs Vo's
method (:mod:`.center_vo`) on two row groups (:mod:`.center_rows`) of a 180-degree scan, polished by
slice sharpness (:mod:`.center_sharpness`) and cross-checked with the 0/180 pair
(:mod:`.center_pair`). Each answer carries an uncertainty in px and a confidence that is a fixed
function of it; the fallback rule for uncertain answers is :mod:`.center_estimate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, TypeVar

import numpy as np

from bluesky_tomo_hpc.engine.backend import cpu_threads, get_array_module, to_numpy
from bluesky_tomo_hpc.engine.center_consensus import (
    NO_EVIDENCE_AGREEMENT,
    HalvesPolish,
    negative_mass,
    polish_on_halves,
    spread_uncertainty,
)
from bluesky_tomo_hpc.engine.center_estimate import (
    CONFIDENCE_THRESHOLD,
    CenterEstimate,
    confidence_from_uncertainty,
    resolve_uncertain_center,
)
from bluesky_tomo_hpc.engine.center_pair import center_from_pair, find_center_pairs, phase_correlation_shift
from bluesky_tomo_hpc.engine.center_rows import (
    check_projection_stack,
    row_group_sinograms,
    rows_for_center,
    search_width,
    search_window,
)
from bluesky_tomo_hpc.engine.center_sharpness import refine_center_sharpness, total_variation, try_centers
from bluesky_tomo_hpc.engine.center_vo import find_center_vo
from bluesky_tomo_hpc.engine.halfturn import covers_full_turn, is_half_acquisition, match_half_turns
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.preprocess import check_angles, minus_log
from bluesky_tomo_hpc.engine.sinogram_recon import reconstruct_at_centers
from bluesky_tomo_hpc.model import TomoDataError

__all__ = [
    "CenterEstimate",
    "phase_correlation_shift",
    "center_from_pair",
    "find_center_pairs",
    "find_center_vo",
    "find_center",
    "search_window",
    "confidence_from_uncertainty",
    "CONFIDENCE_THRESHOLD",
    "resolve_uncertain_center",
    "total_variation",
    "try_centers",
]


_T = TypeVar("_T")


def _each(pool: ThreadPoolExecutor | None, call: Callable[[Any], _T], items: Sequence[Any]) -> list[_T]:
    """``[call(x) for x in items]``, on the pool's threads when there is one: the centre's
    stages are independent per row group and spend their time in NumPy and SciPy, which
    release the GIL, so a 2-core machine does two at once."""
    return list(pool.map(call, items)) if pool is not None and len(items) > 1 else [call(x) for x in items]


def _centre_pool() -> ThreadPoolExecutor | nullcontext[None]:
    """``with _centre_pool() as pool``: a pool of its own for one search (never the block pool
    its stages use inside), or None on one core."""
    t = min(cpu_threads(), 4)
    return ThreadPoolExecutor(t, thread_name_prefix="centre") if t > 1 else nullcontext()


def _vo_rows(groups: list[Any], rows: list[int], theta: np.ndarray, params: ReconParams,
             pool: ThreadPoolExecutor | None = None) -> CenterEstimate:
    """Vo's centre of two row groups (see :func:`row_group_sinograms`), sized for speed: the wide
    window is searched once, on the mean of the groups; each group is then refined near it (on
    at most 768 columns: the image polish that follows works on 512), the groups at once."""
    width = search_width(groups[0].shape[-1], params)
    wide = _vo_wide(sum(groups) / len(groups), theta, width) if len(groups) > 1 else None
    ests = _each(pool, lambda g: _vo_two_stage(g, theta, width, wide), groups)
    centers = np.array([e.center for e in ests])
    center = float(np.median(centers))
    spread = float(np.abs(centers - center).max()) if len(centers) > 1 else 0.0
    conf = float(np.median([e.confidence for e in ests]))
    details = {"rows": rows, "row_centers": centers.tolist(), "row_spread_px": spread,
               "row_confidences": [e.confidence for e in ests],
               "minimum_at_search_edge": any(e.details["minimum_at_search_edge"] for e in ests)}
    return CenterEstimate(center, float(np.clip(conf, 0.0, 1.0)), "vo", details)


def _vo_wide(sino: Any, theta: np.ndarray, width: float) -> CenterEstimate | None:
    """The wide first search (None where the usual search covers the window): coarse only, on a
    detector binned so that at most ~128 candidates are compared; its minimum's depth and rivals
    make the confidence."""
    nx = sino.shape[-1]
    if width <= 64 or nx <= 256:
        return None
    return find_center_vo(sino, theta, width, fine_radius=0.0, max_rows=(192, 192),
                          max_cols=max(64, int(nx * 32 / width)))


def _vo_two_stage(sino: Any, theta: np.ndarray, width: float, wide: CenterEstimate | None = None,
                  ) -> CenterEstimate:
    """Vo's centre within +/- ``width`` px at a bounded cost: the wide search (:func:`_vo_wide`,
    of this sinogram unless given), then the usual search (512 columns, +/- 1 px fine, 256
    angles) within a few binned pixels of it (the image polish that follows goes further)."""
    if wide is None:
        wide = _vo_wide(sino, theta, width)
    if wide is None:
        return find_center_vo(sino, theta, width, fine_radius=2.0, max_rows=(192, 384), max_cols=512)
    near = 2.0 * wide.details["binning"] + 2.0
    local = find_center_vo(sino, theta, near, center_guess=wide.center, fine_radius=1.0,
                           max_rows=(192, 256), max_cols=512, max_fine_cols=768)
    details = {**local.details, "wide_search": {k: wide.details[k] for k in ("coarse_center", "binning",
                                                                             "search_range")},
               "minimum_at_search_edge": wide.details["minimum_at_search_edge"]}
    return CenterEstimate(local.center, wide.confidence, "vo", details)


def _halfturn_rows(proj_norm: Any, theta: np.ndarray, params: ReconParams, logged: bool = False
                   ) -> CenterEstimate:
    """360-degree scans: register the two half-turns of a few rows (any axis position); a
    half acquisition (axis in the outer quarter) is recognised here, else the search window
    applies."""
    nx = proj_norm.shape[2]
    rows = rows_for_center(proj_norm.shape[1], params)
    sinos = [to_numpy(proj_norm[:, r, :] if logged else minus_log(proj_norm[:, r, :], params.minus_log_clip))
             for r in rows]
    with _centre_pool() as pool:
        matches = _each(pool, lambda s: match_half_turns(s, theta), sinos)
    free = float(np.median([m.center for m in matches]))
    half = is_half_acquisition(free, nx, theta, params.half_acquisition)
    window = search_window(nx, params)
    if not half and not window[0] <= free <= window[1]:
        with _centre_pool() as pool:
            matches = _each(pool, lambda s: match_half_turns(s, theta, window=window), sinos)
    centers = np.array([m.center for m in matches])
    center = float(np.median(centers))
    spread = float(np.median(np.abs(centers - center))) if len(centers) > 1 else 0.0
    u = math.hypot(float(np.median([m.uncertainty_px for m in matches])), spread)
    details: dict[str, Any] = {
        "rows": rows, "row_centers": centers.tolist(), "row_spread_px": spread,
        "row_uncertainties_px": [m.uncertainty_px for m in matches], "half_acquisition": half,
        "overlap_px": float(np.median([m.overlap_px for m in matches])),
        "matches": [m.details for m in matches],
    }
    if half:
        details["axis_side"] = "right" if center > (nx - 1) / 2.0 else "left"
    else:
        details["search_window"] = window
    details["uncertainty_px"] = u
    return CenterEstimate(center, confidence_from_uncertainty(u), "halfturn", details)


def _vo_uncertainty(vo: CenterEstimate) -> float:
    """Vo's metric: a deep, unrivalled minimum (confidence 1) pins the centre to ~0.3 px; a
    shallow one (noise, truncation) leaves it loose."""
    return math.hypot(0.3 / max(vo.confidence, 0.05), float(vo.details.get("row_spread_px", 0.0)))


def find_center(proj_norm: Any, theta: Any, params: ReconParams, *, minus_logged: bool = False
                ) -> CenterEstimate:
    """The rotation axis for normalised projections (n_angles, ny, nx), per ``params``;
    ``minus_logged``: they are -log data already (the pipeline's), which every stage reads as
    is: no exp / -log round trip over the rows (~10 % of the centre's CPU at 720 x 1024).

    A numeric ``params.center`` is returned as is (method ``manual``). ``auto``: a 360-degree
    scan registers its two half-turns (:mod:`.halfturn`; recognises half acquisitions); a
    180-degree scan takes Vo's multi-row result polished to the sharpest slice
    (:func:`refine_center_sharpness`) and cross-checked with the 0/180 pair when there is one.
    Every automatic answer stays within :func:`search_window` (unless a half acquisition) and
    carries ``details["uncertainty_px"]``; the confidence is
    :func:`confidence_from_uncertainty` of it, compare with :data:`CONFIDENCE_THRESHOLD`.
    """
    arr = check_projection_stack(proj_norm, theta)
    if params.center != "auto":
        return CenterEstimate(float(params.center), 1.0, "manual", {})
    th, warn = check_angles(theta)
    if np.any(np.diff(th) < 0):  # Vo's metric and the pairs need the rows in angle order
        order = np.argsort(th, kind="stable")
        th, arr = th[order], arr[get_array_module(arr).asarray(order)]
    extra = {"angle_warning": warn} if warn else {}
    method = params.center_method
    if method == "halfturn" or (method == "auto" and covers_full_turn(th)):
        est = _halfturn_rows(arr, th, params, minus_logged)
        if method == "auto" and not est.details["half_acquisition"]:
            est = _full_turn_consensus(arr, th, est, params, minus_logged)
        return CenterEstimate(est.center, est.confidence, est.method, {**est.details, **extra})
    if method == "pairs":
        est = find_center_pairs(arr, th, minus_logged=minus_logged)
        return CenterEstimate(est.center, est.confidence, "pairs", {**est.details, **extra})
    clip = None if minus_logged else params.minus_log_clip
    rows, groups = row_group_sinograms(arr, params, clip)
    sino = np.mean([to_numpy(g) for g in groups], axis=0)  # one slice of the rows used, less noise
    with _centre_pool() as pool:
        pairs: Future[CenterEstimate | None] | None = None
        if method != "vo" and pool is not None:  # the 0/180 pair beside Vo's search
            pairs = pool.submit(_pairs_or_none, arr, th, minus_logged)
        vo = _vo_rows(groups, rows, th, params, pool)
        pr = pairs.result() if pairs is not None else None
    if method == "vo":
        u = _vo_uncertainty(vo)
        return CenterEstimate(vo.center, confidence_from_uncertainty(u), "vo",
                              {**vo.details, **extra, "uncertainty_px": u})
    if pairs is None:
        pr = _pairs_or_none(arr, th, minus_logged)
    lo, hi = search_window(arr.shape[2], params)
    start, u_start = vo, _vo_uncertainty(vo)
    pair_usable = (pr is not None and lo <= pr.center <= hi and min(pr.details["peaks"]) > 0.5
                   and pr.details["angle_mismatch_deg"] <= 1.5)
    if pr is not None and pair_usable and (
            vo.details["minimum_at_search_edge"] or vo.confidence < 0.3
            or (abs(pr.center - vo.center) > 2.0 and _slice_prefers(sino, th, pr.center, vo.center, params))):
        # Vo's metric has a false minimum where the mirrored copy barely overlaps (axis more
        # than ~nx/8 from the middle, small sample): the 0/180 pair does not, so start there;
        # features at a quarter of the width move by r * mismatch between the two projections
        start = pr
        u_start = math.hypot(0.3 / min(pr.details["peaks"]),
                             0.125 * arr.shape[2] * math.radians(pr.details["angle_mismatch_deg"]))
    est = refine_center_sharpness(arr, th, start, params, max_width=512, max_angles=360, sino=sino)
    details: dict[str, Any] = {**est.details, "vo": vo, "pairs": pr, "started_from": start.method, **extra}
    # the image optimum is what a person checks; Vo's metric may sit ~1 px off it (the tooth)
    u = math.hypot(u_start, 0.25 * abs(est.center - start.center))
    if est.details.get("sharpness_at_edge"):
        u += 1.0  # the image optimum is further from the start than the refinement follows
    if pr is not None and start is vo and pr.details["angle_mismatch_deg"] < 0.5 and pr.confidence > 0.3:
        diff = abs(pr.center - est.center)
        details["disagreement_px"] = diff
        if diff > 1.0:  # two independent methods disagree: the worse of them bounds the error
            u = math.hypot(u, diff / 2.0)
        elif diff < 0.5 and pr.confidence >= 0.5:
            # a sinogram metric plus image sharpness, and a projection registration, fail in
            # different ways: agreeing, they pin the centre to about their difference
            u = min(u, max(0.35, diff))
    center, u, how = _half_turn_consensus(sino, arr.shape[2], th, est, u, vo, pr, params, details)
    if not lo <= center <= hi:
        clipped = float(np.clip(center, lo, hi))
        u += abs(clipped - center)
        center = clipped
    details.update(uncertainty_px=u, search_window=(lo, hi))
    return CenterEstimate(center, confidence_from_uncertainty(u), f"auto:{how}", details)


def _pairs_or_none(arr: Any, th: np.ndarray, logged: bool = False) -> CenterEstimate | None:
    """The 0/180 pair's centre, None where the scan has no pair near 180 degrees."""
    try:
        return find_center_pairs(arr, th, minus_logged=logged)
    except TomoDataError:
        return None


def _slice_prefers(sino: np.ndarray, th: np.ndarray, a: float, b: float, params: ReconParams) -> bool:
    """Whether the slice at centre ``a`` has less negative mass than the one at ``b``: settles
    which of two far-apart starts (Vo's, the pair's) the data support."""
    slices = reconstruct_at_centers(sino, th, [a, b], params)
    return negative_mass(slices[0]) < negative_mass(slices[1])


def _mean_sinogram(proj_norm: Any, params: ReconParams, logged: bool = False) -> np.ndarray:
    """The -log sinogram of the mean of the rows the search uses (one slice, less noise)."""
    _, groups = row_group_sinograms(proj_norm, params, None if logged else params.minus_log_clip)
    return np.mean([to_numpy(g) for g in groups], axis=0)


def _half_turn_consensus(sino: np.ndarray, nx: int, th: np.ndarray, est: CenterEstimate, u_legacy: float,
                         vo: CenterEstimate, pr: CenterEstimate | None, params: ReconParams,
                         details: dict[str, Any],
                         ) -> tuple[float, float, str]:
    """180-degree scans: the negative-mass optimum on even / odd projections
    (:mod:`.center_consensus`) beside the sharpest slice (``est``), Vo and the pair. Agreeing
    within 1 px, the negative-mass optimum is the answer (total variation is known to sit up to
    ~1 px off on real scans, so its distance counts half); disagreeing, the median of all, and
    their spread is the uncertainty."""
    polish = polish_on_halves(sino, th, est.center, params)
    details["negative_mass"] = _polish_details(polish)
    if polish.agreement < NO_EVIDENCE_AGREEMENT:  # the halves' slices are noise: no sample
        details["no_evidence"] = True
        return est.center, float(nx), est.method
    if polish.at_edge:  # no bracketed optimum near the sharpest slice: the earlier answer stands
        return est.center, max(u_legacy, 1.0), est.method
    others = [(est.center, 0.5)]
    if not vo.details.get("minimum_at_search_edge"):
        others.append((vo.center, 0.5))
    if pr is not None and pr.details["angle_mismatch_deg"] < 0.5 and min(pr.details["peaks"]) > 0.3:
        others.append((pr.center, 0.5))
    # both halves together should land between the halves' own optima; where they do not (few
    # angles per half, streaks dominating the metric) the metric is not to be trusted alone
    consistent = abs(polish.center - float(np.mean(polish.halves))) <= max(0.5, polish.half_spread)
    if consistent and abs(polish.center - est.center) <= 1.0:
        u = spread_uncertainty(polish.center, others[:1], polish.half_spread)
        return polish.center, u, "negative-mass"
    answers = [polish.center, *(polish.halves if not consistent else ()), *(c for c, _ in others)]
    center = float(np.median(answers))
    u = spread_uncertainty(center, [(a, 1.0) for a in answers], polish.half_spread)
    return center, u, "median"


def _full_turn_consensus(arr: Any, th: np.ndarray, ht: CenterEstimate, params: ReconParams,
                         logged: bool = False) -> CenterEstimate:
    """Full-field 360-degree scans: the half-turn registration beside the negative-mass optimum
    of each half-turn alone (three independent answers); their mean (median when one strays by
    more than 0.5 px), their spread the uncertainty. Without a bracketed optimum the
    registration stands with its own uncertainty."""
    polish = polish_on_halves(_mean_sinogram(arr, params, logged), th, ht.center, params, full_turn=True)
    details = {**ht.details, "negative_mass": _polish_details(polish), "registration": ht.center}
    if polish.agreement < NO_EVIDENCE_AGREEMENT:  # the halves' slices are noise: no sample
        details.update(no_evidence=True, uncertainty_px=float(arr.shape[2]))
        return CenterEstimate(ht.center, 0.0, "halfturn", details)
    if polish.at_edge:
        return CenterEstimate(ht.center, ht.confidence, "halfturn", details)
    answers = [ht.center, *polish.halves]
    center = float(np.mean(answers))
    if max(abs(a - center) for a in answers) > 0.5:
        center = float(np.median(answers))
    u = spread_uncertainty(center, [(a, 1.0) for a in answers], scale=1.5)
    lo, hi = details.get("search_window", (-math.inf, math.inf))
    if not lo <= center <= hi:
        return CenterEstimate(ht.center, ht.confidence, "halfturn", details)
    details["uncertainty_px"] = u
    return CenterEstimate(center, confidence_from_uncertainty(u), "halfturn+negative-mass", details)


def _polish_details(p: HalvesPolish) -> dict[str, Any]:
    return {"center": p.center, "halves": list(p.halves), "at_edge": p.at_edge,
            "candidates": p.candidates, "metric": p.metric}
