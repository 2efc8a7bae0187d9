"""Scan health, the array part: what one frame, a pair of frames or a set of flats says about
the scan, in numbers (no Bluesky, no threads; the live consumer is ``sinks.scan_health_sink``).

Why profiles and not images: a live check has a few milliseconds per 2160 x 2560 frame. Every
measure here reads two 1-D profiles of the frame (column sums over a stride of rows, row sums
over a stride of columns: ~0.5 ms together) and its extremes (max and min, ~0.3 ms), and counts
saturated or zero pixels only when the extremes say there are any. What the profiles give:

* intensity: the 90th percentile of the dark-subtracted column means, i.e. the open beam beside
  the sample (or the brightest part of it): against a running reference it shows a beam loss or
  a closed shutter, against the flats the intensity the scan is taken at;
* horizontal motion: the shift between the column profiles (as -log of the flat-normalised
  counts) of consecutive projections, whose sample turns only a small step in between (a jump),
  and, in a 360-degree scan, the centre given by each projection and its mirrored partner 180
  degrees earlier (any horizontal move changes it: drift as well as jumps);
* vertical motion: the shift of the row profile against the scan's first projections; rotation
  about the vertical axis does not move a feature up or down, so any shift is the sample moving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: profiles are built from at most this many rows (column profile) or columns (row profile)
PROFILE_SAMPLES = 256
#: a profile shorter than this says nothing about motion (sinogram-only data, small crops)
MIN_PROFILE = 32
#: correlation peak under which a registration is not trusted (too unlike to tell a shift)
MIN_PEAK = 0.5


def profile_steps(frame_shape: tuple[int, int]) -> tuple[int, int]:
    """(row stride, column stride) so that each profile sums at most PROFILE_SAMPLES lines."""
    ny, nx = frame_shape
    return max(1, math.ceil(ny / PROFILE_SAMPLES)), max(1, math.ceil(nx / PROFILE_SAMPLES))


@dataclass(frozen=True)
class FrameProfiles:
    """The raw numbers of one frame: column and row profiles (mean counts per sampled pixel),
    and the fractions of saturated and zero pixels among the column profile's rows."""

    columns: np.ndarray  # (nx,) float64: mean over the sampled rows
    rows: np.ndarray  # (ny,) float64: mean over the sampled columns
    saturated_fraction: float
    zero_fraction: float


def frame_profiles(frame: np.ndarray, steps: tuple[int, int], saturation: float | None) -> FrameProfiles:
    """Profiles and pixel fractions of one (ny, nx) frame. The fractions are counted on the
    sampled rows (an unbiased estimate; 1 in 9 rows of a 2160-row frame), and only when their
    max reaches ``saturation`` (or, for integer counts, their min 0). Integer frames sum in
    uint32: exact, and twice as fast as float64 on a frame that is read from memory once."""
    rs, cs = steps
    acc = np.uint32 if frame.dtype.kind in "ui" and frame.dtype.itemsize <= 2 else np.float64
    sub = frame[::rs]
    columns = sub.sum(axis=0, dtype=acc) / np.float64(sub.shape[0])
    picked = frame[:, ::cs]
    rows = picked.sum(axis=1, dtype=acc) / np.float64(picked.shape[1])
    sat = 0.0
    if saturation is not None and sub.max() >= saturation:
        sat = np.count_nonzero(sub >= saturation) / sub.size
    zero = 0.0  # on counts only: a float frame may be normalised already (0 is a value there)
    if frame.dtype.kind in "ui" and sub.min() <= 0:
        zero = np.count_nonzero(sub <= 0) / sub.size
    return FrameProfiles(columns, rows, float(sat), float(zero))


def intensity_level(columns: np.ndarray, dark_columns: np.ndarray | float) -> float:
    """Open-beam level of a frame: the 90th percentile of its dark-subtracted column means."""
    return float(np.percentile(columns - dark_columns, 90.0))


def attenuation(counts: np.ndarray, dark: np.ndarray | float, flat: np.ndarray | None) -> np.ndarray:
    """-log of a profile's transmission (flat-normalised when a flat is known; otherwise -log of
    the counts, which keeps the flat's shape in it but still registers)."""
    signal = np.maximum(np.asarray(counts, np.float64) - dark, 1e-6)
    if flat is not None:
        signal = signal / np.maximum(flat - dark, 1e-6)
    return -np.log(signal)


def register_shift(reference: np.ndarray, moved: np.ndarray, max_shift: int = 64) -> tuple[float, float]:
    """Shift ``s`` (samples, subpixel) with ``moved(x) ~ reference(x - s)``, and the normalised
    correlation peak (0..1; how alike the two are after the shift).

    Correlates the profiles' gradients (a constant offset between them, e.g. a changed beam,
    does not count) through an FFT, then fits a parabola through the peak."""
    a = np.gradient(np.asarray(reference, np.float64))
    b = np.gradient(np.asarray(moved, np.float64))
    a -= a.mean()
    b -= b.mean()
    n = len(a)
    norm = math.sqrt(float(a @ a) * float(b @ b))
    if n < 4 or norm == 0.0:
        return 0.0, 0.0
    size = 1 << (2 * n - 1).bit_length()
    corr = np.fft.irfft(np.conj(np.fft.rfft(a, size)) * np.fft.rfft(b, size), size)
    reach = min(max_shift, n - 2)
    lags = np.concatenate([np.arange(0, reach + 1), np.arange(-reach, 0)])
    window = np.concatenate([corr[: reach + 1], corr[size - reach:]])
    k = int(np.argmax(window))
    peak = float(window[k])
    left, right = window[k - 1], window[(k + 1) % len(window)]
    denom = left - 2 * peak + right
    frac = 0.5 * (left - right) / denom if denom < 0 else 0.0
    return float(lags[k] + np.clip(frac, -0.5, 0.5)), max(0.0, peak / norm)


def mirror_center(earlier: np.ndarray, later: np.ndarray,
                  max_shift: int | None = None) -> tuple[float, float]:
    """Rotation centre (pixel index) from two attenuation profiles 180 degrees apart, and the
    correlation peak: ``later(x) = earlier(2c - x)`` for a sample that did not move."""
    n = len(earlier)
    s, peak = register_shift(earlier[::-1], later, max_shift=max_shift or n // 2)
    return (s + n - 1) / 2.0, peak


@dataclass(frozen=True)
class FlatComparison:
    """How the scan's last flats differ from its first: overall level and pattern."""

    level_ratio: float  # mean(last) / mean(first), dark-subtracted
    pattern_change: float  # 95th percentile of |last / first / level_ratio - 1| on a coarse grid
    dead_fraction: float  # pixels of the first flats under 10 % of their median (dead or masked)


def coarse_grid(frame: np.ndarray, cells: int = 64) -> np.ndarray:
    """Block means on a grid of at most ``cells`` x ``cells`` (the flats' pattern, noise averaged)."""
    ny, nx = frame.shape
    by, bx = max(1, ny // cells), max(1, nx // cells)
    h, w = (ny // by) * by, (nx // bx) * bx
    return frame[:h, :w].reshape(h // by, by, w // bx, bx).mean(axis=(1, 3), dtype=np.float64)


def compare_flats(first: np.ndarray, last: np.ndarray, dark: np.ndarray | float) -> FlatComparison:
    """``first``/``last``: coarse grids (``coarse_grid``) of the mean flat of each set."""
    a = np.maximum(first - dark, 1e-6)
    b = np.maximum(last - dark, 1e-6)
    level = float(b.mean() / a.mean())
    lit = a > 0.1 * np.median(a)  # ignore masked corners: their ratio is noise
    ratio = b[lit] / a[lit] / level
    change = float(np.percentile(np.abs(ratio - 1.0), 95)) if ratio.size else 0.0
    return FlatComparison(level, change, float(1.0 - lit.mean()))


def dead_pixel_fraction(mean_flat: np.ndarray, dark: np.ndarray | float) -> float:
    """Pixels whose flat is under 10 % of the median flat: dead, or covered by something."""
    signal = np.asarray(mean_flat, np.float64) - dark
    return float(np.count_nonzero(signal < 0.1 * np.median(signal)) / signal.size)
