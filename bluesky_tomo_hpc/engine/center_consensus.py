"""The last word on an automatic centre: the reconstructed image, judged on two independent halves
of the data, and an uncertainty measured from how far independent answers disagree.

Why: a sinogram metric (Vo's) or a slice's total variation can sit half a pixel or more off the
true axis on real scans (noise, truncation, a phantom-like symmetric sample), and a confidence
made from the depth of one metric's minimum does not predict that error. Two things do better
(``benchmarks/bench_center.py``, docs/how-to/find-the-centre.md):

* the **negative mass** of the slice (how much of it is below zero, relative to all of it): a
  wrong axis turns every edge into a bright/dark crescent pair, and the dark half of each crescent
  is negative; it tracks the axis to ~0.2 px on real 180-degree scans where total variation
  drifts by 0.5-1 px;
* an **uncertainty from disagreement**: the metric's optimum is found separately on two
  independent halves of the data (even / odd projections of a 180-degree scan, the first /
  second half-turn of a 360-degree one), and beside the other methods' answers; their spread,
  not the metric's depth, is what the estimate's error looks like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bluesky_tomo_hpc.engine.backend import to_numpy
from bluesky_tomo_hpc.engine.halfturn import mirrored_half_turns
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.preprocess import circular_mask, to_binned
from bluesky_tomo_hpc.engine.sinogram_recon import reconstruct_at_centers

__all__ = ["UNCERTAINTY_FLOOR_PX", "NO_EVIDENCE_AGREEMENT", "HalvesPolish", "negative_mass",
           "polish_on_halves",
           "spread_uncertainty"]

#: Below this agreement of the two halves' slices they are noise: the data show no axis at all.
NO_EVIDENCE_AGREEMENT = 0.15

#: The smallest uncertainty any automatic centre states: below a quarter pixel the metrics'
#: own biases (and the references they were checked against) are not known better.
UNCERTAINTY_FLOOR_PX = 0.25


def negative_mass(img: Any, ratio: float = 0.95) -> float:
    """Share of the slice (inside the reconstruction circle) that is negative: least at the
    right axis, where edges are not split into bright/dark crescents."""
    s = np.asarray(circular_mask(np.asarray(to_numpy(img), dtype=np.float64), ratio))
    total = float(np.abs(s).sum())
    return -float(np.minimum(s, 0.0).sum()) / total if total > 0 else 0.0


@dataclass(frozen=True)
class HalvesPolish:
    """The negative-mass optimum near a start: ``center`` (both halves together), ``halves``
    (each half alone), ``at_edge`` (the optimum was not bracketed: not to be used), and the
    curve (``candidates``, ``metric``)."""

    center: float
    halves: tuple[float, float]
    at_edge: bool
    candidates: list[float]
    metric: list[float]
    #: correlation of the two halves' slices at the sample nearest the optimum: near 0 when the
    #: slices are noise (no sample, no evidence of any axis), near 1 for a clear sample
    agreement: float = 1.0

    @property
    def half_spread(self) -> float:
        """Half the distance between the two halves' optima (~ the error of their mean)."""
        return abs(self.halves[0] - self.halves[1]) / 2.0


def _reduced(sino: np.ndarray, theta: np.ndarray, max_width: int, max_angles: int
             ) -> tuple[np.ndarray, np.ndarray, int]:
    """Bin the columns to at most ``max_width`` and keep every k-th angle (at most
    ``max_angles``): enough to compare candidate axes, a fraction of the cost."""
    b = 1
    while sino.shape[1] // b > max_width:
        b *= 2
    if b > 1:
        nb = sino.shape[1] // b
        sino = sino[:, : nb * b].reshape(sino.shape[0], nb, b).mean(axis=2)
    stride = -(-sino.shape[0] // max_angles)
    return np.ascontiguousarray(sino[::stride], dtype=np.float32), np.asarray(theta)[::stride], b


def _halves(sino: np.ndarray, theta: np.ndarray, full_turn: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two independent 180-degree data sets of one sinogram: even / odd projections, or the
    first half-turn and the second one (mirrored back onto the first one's angles)."""
    if full_turn:
        first, mirrored_second, angles = mirrored_half_turns(sino, theta)
        return [(first, angles), (np.ascontiguousarray(mirrored_second[:, ::-1]), angles + np.pi)]
    return [(sino[0::2], theta[0::2]), (sino[1::2], theta[1::2])]


def _vertex(cands: np.ndarray, values: np.ndarray) -> tuple[float, bool]:
    """Sub-step minimum by a parabola through the lowest sample and its neighbours; and whether
    the lowest sample is at either end (not bracketed)."""
    k = int(np.argmin(values))
    if k in (0, len(values) - 1):
        return float(cands[k]), True
    y0, y1, y2 = values[k - 1 : k + 2]
    curv = y0 - 2 * y1 + y2
    step = float(cands[1] - cands[0])
    off = float(np.clip(0.5 * (y0 - y2) / curv, -0.5, 0.5)) if curv > 0 else 0.0
    return float(cands[k]) + off * step, False


def polish_on_halves(
    sino: Any, theta: np.ndarray, start: float, params: ReconParams, *, full_turn: bool = False,
    radius: float = 2.0, step: float = 0.5, follow: int = 4, max_width: int = 512, max_angles: int = 180,
) -> HalvesPolish:
    """The negative-mass optimum of one -log sinogram (n_angles, nx) within ``start`` +/-
    ``radius`` px (followed ``follow`` steps of 1 px further when it lies on the edge), on each
    of two independent halves of the data and on both together. Reconstruction is linear, so
    "both together" is the weighted sum of the halves' slices: no third reconstruction."""
    s = np.asarray(to_numpy(sino), dtype=np.float32)
    halves = []
    b = 1
    for hs, ht in _halves(s, np.asarray(theta, dtype=np.float64), full_turn):
        hs, ht, b = _reduced(hs, ht, max_width, max_angles)
        halves.append((hs, ht))
    ratio = params.circular_mask or 0.95
    weights = [len(ht) for _, ht in halves]

    def metric_at(cs: np.ndarray) -> np.ndarray:  # rows: both, first half, second half
        per_half = [reconstruct_at_centers(hs, ht, [to_binned(float(c), b) for c in cs], params)
                    for hs, ht in halves]
        out = np.empty((4, len(cs)))
        for j in range(len(cs)):
            a, c = (np.asarray(to_numpy(h[j]), dtype=np.float64) for h in per_half)
            ma, mc = circular_mask(a, ratio), circular_mask(c, ratio)
            out[3, j] = float(np.corrcoef(ma.ravel(), mc.ravel())[0, 1]) if ma.std() and mc.std() else 0.0
            out[0, j] = negative_mass((weights[0] * a + weights[1] * c) / sum(weights), ratio)
            out[1, j], out[2, j] = negative_mass(a, ratio), negative_mass(c, ratio)
        return out

    cands = start + np.arange(-radius, radius + step / 2, step)
    values = metric_at(cands)
    for _ in range(follow):
        k = int(np.argmin(values[0]))
        if 0 < k < len(cands) - 1:
            break
        sign = -1.0 if k == 0 else 1.0
        more = cands[k] + sign * step * np.arange(1, max(2, int(round(1.0 / step))) + 1)
        more_values = metric_at(more)
        if sign < 0:
            cands = np.concatenate([more[::-1], cands])
            values = np.concatenate([more_values[:, ::-1], values], 1)
        else:
            cands, values = np.concatenate([cands, more]), np.concatenate([values, more_values], 1)
    center, at_edge = _vertex(cands, values[0])
    h1, e1 = _vertex(cands, values[1])
    h2, e2 = _vertex(cands, values[2])
    agreement = float(values[3, int(np.argmin(np.abs(cands - center)))])
    return HalvesPolish(center, (h1, h2), at_edge or e1 or e2, cands.tolist(), values[0].tolist(), agreement)


def spread_uncertainty(center: float, independent: list[tuple[float, float]], half_spread: float = 0.0,
                       scale: float = 1.0) -> float:
    """Uncertainty (px) of ``center`` from independent answers ``(value, weight)``: the weighted
    RMS distance of the others from it (a systematic disagreement between methods; a weight
    below 1 for a method known to sit off the optimum), the halves' spread (noise), times
    ``scale``, and at least :data:`UNCERTAINTY_FLOOR_PX`."""
    dev = [w * (c - center) for c, w in independent]
    rms = math.sqrt(sum(d * d for d in dev) / len(dev)) if dev else 0.0
    return max(UNCERTAINTY_FLOOR_PX, scale * math.hypot(rms, 1.5 * half_spread))
