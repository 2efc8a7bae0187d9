"""Float slices as 8-bit grey PNG for the browser: small, and contrast chosen on the server from
robust percentiles (or given limits), so a 2560 x 2560 float slice never travels as floats."""

from __future__ import annotations

import base64
import io

import numpy as np

from ..results.pictures import grey_limits


def shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` (2-D) strided down to at most ``max_side`` pixels a side (no copy)."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"a slice must be 2-D, got shape {a.shape}")
    if max_side and max(a.shape) > max_side:
        step = int(np.ceil(max(a.shape) / max_side))
        a = a[::step, ::step]
    return a


def to_png(image: np.ndarray, *, limits: tuple[float, float] | None = None,
           percentiles: tuple[float, float] = (0.5, 99.5), max_side: int | None = None) -> bytes:
    """``image`` (2-D) as PNG bytes; ``max_side`` shrinks it by striding (previews stay small)."""
    from PIL import Image

    a = shrink(image, max_side).astype(np.float32, copy=False)
    lo, hi = limits if limits is not None else grey_limits([a], percentiles)
    if not hi > lo:
        hi = lo + 1.0
    grey = np.clip((np.nan_to_num(a, nan=lo) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
