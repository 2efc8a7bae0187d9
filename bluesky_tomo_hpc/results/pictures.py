"""Pictures people look at: the three orthogonal slices side by side as one PNG."""

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
