"""Pictures people look at: the three orthogonal slices side by side, and the contact sheet of
candidate rotation centres. The engine computes; only this module draws."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np


def grey_limits(
    images: list[np.ndarray], percentiles: tuple[float, float] = (0.5, 99.5)
) -> tuple[float, float]:
    """Shared grey levels from robust percentiles, so the three panels compare directly."""
    values = np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in images])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, list(percentiles))
    return float(lo), float(hi if hi > lo else lo + 1.0)


def save_orthoslices_png(previews: Mapping[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Write xy / xz / yz slices as one PNG (matplotlib, no display needed); returns the path."""
    # an explicit Agg canvas, not pyplot: no global backend switch (inline plots in notebooks
    # keep working) and safe from worker threads
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [k for k in ("xy", "xz", "yz") if k in previews] or list(previews)
    images = [np.asarray(previews[k], dtype=np.float32) for k in names]
    vmin, vmax = grey_limits(images)
    widths = [img.shape[1] for img in images]
    fig = Figure(figsize=(4 * len(images), 4.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(images), gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, name, img in zip(axes[0], names, images, strict=True):
        ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{name} slice {img.shape[0]}x{img.shape[1]}")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _sample_limits(slices: list[np.ndarray]) -> tuple[float, float]:
    """Grey levels from the sample, not the empty corners: percentiles of the pixels inside the
    reconstruction circle that differ from the masked value (0), shared by every panel."""
    values = []
    for img in slices:
        a = np.asarray(img, dtype=np.float32)
        n = min(a.shape)
        yy, xx = np.mgrid[: a.shape[0], : a.shape[1]]
        inside = (yy - (a.shape[0] - 1) / 2) ** 2 + (xx - (a.shape[1] - 1) / 2) ** 2 <= (0.95 * n / 2) ** 2
        v = a[inside & np.isfinite(a) & (a != 0)]
        values.append(v)
    allv = np.concatenate(values) if values else np.empty(0)
    if allv.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(allv, [1, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def save_center_sheet_png(
    slices: Mapping[float, np.ndarray], path: str | Path, *, row: int, highlight: float | None = None,
    title: str = "",
) -> Path:
    """A contact sheet of one detector ``row`` reconstructed at each candidate centre, titled by
    centre (``highlight``, e.g. the estimate, in red), on one grey scale taken from the sample,
    so that the sharpest slice stands out. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    centers = list(slices)
    imgs = [np.asarray(slices[c], dtype=np.float32) for c in centers]
    k = len(imgs)
    ncols = int(np.ceil(np.sqrt(k)))
    nrows = int(np.ceil(k / ncols))
    vmin, vmax = _sample_limits(imgs)
    fig = Figure(figsize=(2.4 * ncols, 2.6 * nrows + 0.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (img, c) in enumerate(zip(imgs, centers, strict=True)):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        mark = highlight is not None and abs(c - highlight) < 1e-6
        ax.set_title(f"centre {c:.2f}", fontsize=9, color="red" if mark else "black")
        ax.axis("off")
    fig.suptitle(title or f"detector row {row}: candidate rotation centres", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
