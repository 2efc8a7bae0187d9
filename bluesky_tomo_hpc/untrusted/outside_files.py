"""Files named from outside: found inside their folder, read with bounds, never echoed.

The one rule for every file or folder whose name comes from outside this process (a sample
name looked up in a library folder, a settings or parameters file, an HDF5 external link or a
virtual dataset's source, a recipe): its path is resolved (symbolic links followed) and must stay
inside the folder it is named relative to (:func:`resolve_inside`; path components made from
outside strings go through :func:`~bluesky_tomo_hpc.model.path_inside`); it is read only if it
is a regular file, up to a size bound (:func:`read_text_bounded`: a FIFO, ``/dev/zero`` or a
21 GB file never hangs or fills memory); YAML is read without aliases and nesting beyond
:data:`MAX_YAML_DEPTH` (:func:`load_yaml`: no "billion laughs"); and a refusal names the file
and the problem, never the file's content: :func:`validation_line` words a pydantic refusal
with the field names only (an unknown key is named only when it looks like a field name).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..model import UnsafeNameError

#: deepest YAML nesting accepted (settings and samples need 4; PyYAML recurses per level)
MAX_YAML_DEPTH = 32
#: an unknown key is named in a refusal only when it looks like a field name
_FIELD_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,39}")


class UntrustedFileError(ValueError):
    """A file named from outside cannot be used; the message names the file and why, in one line."""


def resolve_inside(folder: str | Path, name: str | Path, what: str = "file") -> Path:
    """``folder / name`` resolved (links followed); refused unless it stays inside ``folder``.

    ``name`` may hold sub-folders ("raw/scan_0001.h5") or be absolute; either way the resolved
    path must lie inside the resolved folder. The refusal names ``what``, not the target.
    """
    root = Path(folder).resolve()
    if not isinstance(name, str | Path) or "\x00" in str(name):
        raise UnsafeNameError(f"{what}: not a usable file name; refused")
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise UnsafeNameError(f"{what} leads outside its folder {root} (a symbolic link or '..'); refused")
    return path


def read_text_bounded(path: str | Path, max_bytes: int, what: str = "file") -> str:
    """The text of a regular file of at most ``max_bytes`` bytes (UTF-8), or an
    :class:`UntrustedFileError` naming ``what`` and the file: missing, not a regular file (a
    folder, a FIFO, a device), too big, unreadable or not UTF-8."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UntrustedFileError(f"cannot read {what} {p}: {exc.strerror or type(exc).__name__}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedFileError(f"{what} {p} is not a regular file; give a file")
        if info.st_size > max_bytes:
            raise UntrustedFileError(
                f"{what} {p} is {info.st_size} bytes, more than the {max_bytes} accepted")
        chunks, size = [], 0
        while size <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew while being read
        raise UntrustedFileError(f"{what} {p} is more than the {max_bytes} bytes accepted")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UntrustedFileError(
            f"{what} {p} is not UTF-8 text (byte {exc.start}); is it the right file?") from None


def load_yaml(text: str, what: str = "file") -> Any:
    """``yaml.safe_load`` without aliases or deep nesting; a YAML error becomes one line with
    its position and the parser's words (never the offending text)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise UntrustedFileError(
                    f"{what}: YAML aliases (*name) are not accepted; write the values out")
            self.depth += 1
            if self.depth > MAX_YAML_DEPTH:
                raise UntrustedFileError(f"{what}: nested deeper than {MAX_YAML_DEPTH} levels")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # the parser quotes a token (':') or the text it choked on: only the token is repeated
        problem = str(getattr(exc, "problem", None) or "syntax error")
        problem = re.sub(r"'[^']{4,}'|\"[^\"]{4,}\"", "'...'", problem)
        raise UntrustedFileError(f"{what} is not valid YAML{at}: {problem}") from None


def load_yaml_file(path: str | Path, max_bytes: int, what: str = "file") -> Any:
    """:func:`read_text_bounded` then :func:`load_yaml`, errors naming ``what`` and the file."""
    return load_yaml(read_text_bounded(path, max_bytes, what), f"{what} {Path(path).name}")


def _shown_input(value: Any) -> str:
    """The part of a refused value a message may repeat: numbers and booleans (never text)."""
    if isinstance(value, bool | int | float) or value is None:
        return f" (got {value!r})"
    return ""


def validation_line(errors: Iterable[Mapping[str, Any]], limit: int = 3) -> str:
    """A pydantic refusal (``exc.errors()``) in one line: where and what, never the values of
    text fields, and unknown keys named only when they look like field names."""
    errs = list(errors)
    parts = []
    for e in errs[:limit]:
        loc = [str(p) for p in e.get("loc", ())]
        if e.get("type") == "extra_forbidden" and loc and not _FIELD_LIKE.fullmatch(loc[-1]):
            loc[-1] = "(a key that is not a field name)"
        where = ".".join(loc)
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}{_shown_input(e.get('input'))}" if where else msg)
    more = f" and {len(errs) - limit} more" if len(errs) > limit else ""
    return "; ".join(parts) + more
