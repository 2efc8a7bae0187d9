"""What an HDF5 scan file may hold, checked before it is read: links that stay in its folder,
numbers where numbers belong, image keys NXtomo knows.

A scan file comes from outside (a detector, a colleague, another facility), and HDF5 can name
other files: an external link (``/exchange/data`` -> ``frames.h5:/data``) or the sources of a
virtual dataset. An external link is followed only when its target, resolved relative to the
file that names it, lies inside that file's folder (the one rule of
:mod:`bluesky_tomo_hpc.untrusted.outside_files`), so a scan cannot make us read
``/etc/shadow`` or another user's data; a virtual dataset's sources must all exist (they may lie
elsewhere: staged job inputs are such views); a missing target is named, not a ``KeyError``. Angles,
frames and keys must be real numbers (strings, booleans, complex or compound values are refused
naming the dataset), and NXtomo frames with an ``image_key`` other than 0 (projection), 1 (flat),
2 (dark) are never dropped silently: 3 (invalid, by the standard) and unknown keys are counted in
a warning that names the dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from ..model import TomoDataError, UnsafeNameError
from ..untrusted.outside_files import resolve_inside

#: NXtomo image_key values
KEY_PROJECTION, KEY_FLAT, KEY_DARK, KEY_INVALID = 0, 1, 2, 3


def _folder_of(obj: h5py.HLObject | h5py.File) -> str:
    return os.path.dirname(os.path.realpath(obj.file.filename))


def link_target(linking: h5py.HLObject, link: h5py.ExternalLink, where: str) -> Path:
    """The file an external link at ``where`` names, resolved inside the linking file's folder."""
    try:
        return resolve_inside(_folder_of(linking), link.filename, where)
    except UnsafeNameError:
        raise TomoDataError(
            f"{linking.file.filename}: {where} is an external link to a file outside the scan's folder; "
            "refused (copy that file next to the scan, or link to one inside its folder)") from None


def check_links(f: h5py.File, path: str) -> None:
    """Every external link on the way to ``path`` stays inside ``f``'s folder (a dangling one is
    left to the caller, which reports the dataset missing)."""
    node: h5py.Group = f["/"]
    walked = ""
    for name in (p for p in path.split("/") if p):
        walked += "/" + name
        link = node.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            link_target(node, link, walked)
        child = node.get(name) if link is not None else None
        if not isinstance(child, h5py.Group):
            return
        node = child


def check_virtual_sources(ds: h5py.Dataset, what: str) -> None:
    """Every source file of a virtual dataset exists (HDF5 would fill a missing one with zeros:
    frames lost without a word). Sources may lie outside the file's folder: a staged job input
    is a virtual view onto the raw files wherever the detector wrote them."""
    if not ds.is_virtual:
        return
    for src in ds.virtual_sources():
        if src.file_name in (".", ""):
            continue
        target = Path(os.path.realpath(os.path.join(_folder_of(ds), src.file_name)))
        if not target.is_file():
            raise TomoDataError(f"{ds.file.filename}: {what} is a virtual dataset whose source file "
                                f"{target.name} is missing")


def real_numbers(ds: h5py.Dataset, what: str, path: str) -> h5py.Dataset:
    """``ds`` if it holds integers or floats; else a :class:`TomoDataError` naming it and what it holds."""
    kind = ds.dtype
    if np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating):
        return ds
    held = ("text" if h5py.check_string_dtype(kind) is not None or kind.kind in "SUO" else
            "true/false values" if kind.kind == "b" else "complex numbers" if kind.kind == "c" else
            f"{kind} values")
    raise TomoDataError(f"{path}: {what} holds {held}, not real numbers; store it as integers or floats")


def image_keys(ds: h5py.Dataset, path: str) -> tuple[np.ndarray, list[str]]:
    """The NXtomo keys of ``ds`` as integers, and the warnings about frames that are neither a
    projection, a flat nor a dark (skipped, and said so)."""
    real_numbers(ds, "image_key", path)
    raw = np.asarray(ds[()])
    keys = raw.astype(np.int64)
    if raw.dtype.kind == "f" and not np.array_equal(keys, raw):
        raise TomoDataError(f"{path}: {ds.name} holds fractional image keys; NXtomo keys are 0, 1, 2, 3")
    warnings = []
    invalid = int(np.count_nonzero(keys == KEY_INVALID))
    if invalid:
        warnings.append(f"{ds.name}: {invalid} frame(s) marked invalid (image_key 3) skipped")
    unknown = ~np.isin(keys, (KEY_PROJECTION, KEY_FLAT, KEY_DARK, KEY_INVALID))
    if unknown.any():
        values = ", ".join(str(v) for v in np.unique(keys[unknown])[:5])
        warnings.append(f"{ds.name}: {int(unknown.sum())} frame(s) with unknown image_key ({values}) "
                        "skipped; NXtomo knows 0 projection, 1 flat, 2 dark, 3 invalid")
    return keys, warnings
