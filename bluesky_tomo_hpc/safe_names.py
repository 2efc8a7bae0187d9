"""The one rule for names that come from outside: a safe path component, or a clear refusal.

Run uids, sample and plan names, detector keys, file names in documents, catalog keys and network
payloads are written by whoever can reach a RunEngine, a PV or a port. Any of them can become
part of a file name here (jobs, journals, previews, TIFFs, staging, results, Tiled keys), so each
passes through :func:`safe_component` first, and every path made from one is checked with
:func:`path_inside`. A string that is already safe (a uuid, ``scan_42``) comes back unchanged,
so ordinary data keeps its ordinary names. Anything else has each character outside
``[A-Za-z0-9._-]`` replaced by ``_`` and a short hash of the original appended, so two different
hostile strings never share a folder. Strings that cannot be made safe (not text, empty, a NUL,
longer than :data:`MAX_INPUT_CHARS`) are refused with :class:`UnsafeNameError`, which names the
problem and what would be accepted.

Shell lines are a separate matter: a value never reaches one; script templates take values
through files, the environment or :func:`shlex.quote`-d argv (see ``jobs/executors/slurm.py``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

#: longest outside string accepted at all (a uid is 36 characters; a sample name rarely 100)
MAX_INPUT_CHARS = 1024
#: longest component produced (hash suffix included), well under every filesystem's 255 bytes
MAX_COMPONENT_CHARS = 96

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._-]")


class UnsafeNameError(ValueError):
    """An outside string that cannot be turned into a safe name; the message says why."""


def safe_component(value: object, what: str = "name") -> str:
    """``value`` as one path component: no separators, no leading dot, ASCII, length-limited.

    ``what`` names the value in the refusal ("run uid", "sample name").
    """
    if not isinstance(value, str):
        raise UnsafeNameError(f"{what} must be text, not {type(value).__name__} ({value!r:.60})")
    if not value.strip():
        raise UnsafeNameError(f"{what} is empty; give a non-empty name")
    if "\x00" in value:
        raise UnsafeNameError(f"{what} {value[:40]!r}... contains a NUL character; it is refused")
    if len(value) > MAX_INPUT_CHARS:
        raise UnsafeNameError(
            f"{what} is {len(value)} characters long; at most {MAX_INPUT_CHARS} are accepted")
    if _SAFE.fullmatch(value) and len(value) <= MAX_COMPONENT_CHARS and value not in (".", ".."):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    stem = _UNSAFE_CHAR.sub("_", value).lstrip(".-") or "_"  # no hidden file, no "-option"
    return f"{stem[: MAX_COMPONENT_CHARS - len(digest) - 1]}-{digest}"


def path_inside(folder: str | Path, *parts: object, what: str = "name") -> Path:
    """``folder / part / ...`` with every part made safe, checked to resolve inside ``folder``.

    The check catches what the components cannot: a symlink planted inside the folder that
    points out of it.
    """
    root = Path(folder)
    path = root.joinpath(*(safe_component(p, what) for p in parts))
    resolved_root = root.resolve()
    if not path.resolve().is_relative_to(resolved_root):
        raise UnsafeNameError(f"{path} leads outside {resolved_root} (a symbolic link?); refused")
    return path
