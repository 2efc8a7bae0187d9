"""Query parameters of the web API, each validated and bounded before it is used.

Why one place: a parameter is a number, a bit of text or one of a few words, and each has a
range; left to each route, ``limit=-5`` sliced a list from the end and ``max_side=-1`` read a
full-resolution volume into memory. A :class:`Query` refuses (HTTP 400, one line naming the
parameter and what is accepted) an unknown parameter, one given twice, a number out of range or
not finite, text too long or with control characters, a word not in its list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request

from .catalog import CatalogError

#: every request may carry the key (a bookmarked link); routes name their own parameters
ALWAYS = frozenset({"api_key"})
#: the whole query string, in characters
MAX_QUERY_CHARS = 2048


class QueryError(CatalogError):
    """A query parameter refused (HTTP 400)."""

    def __init__(self, message: str):
        super().__init__(message, status=400)


def _shown(raw: str) -> str:
    """A refused value, short and printable, for the message."""
    text = "".join(c if c.isprintable() else "?" for c in raw[:40])
    return repr(text + ("..." if len(raw) > 40 else ""))


def path_text(request: Request, name: str, max_chars: int = 200) -> str:
    """Path parameter ``name``: printable and at most ``max_chars`` characters (a job id, a uid)."""
    raw = request.path_params[name]
    if len(raw) > max_chars or not raw.isprintable():
        raise QueryError(f"{name} {_shown(raw)} is not a valid {name.replace('_', ' ')}")
    return raw


class Query:
    """The query parameters of ``request``, limited to ``allowed`` (and ``api_key``)."""

    def __init__(self, request: Request, allowed: Iterable[str] = ()):
        self.allowed = frozenset(allowed)
        if len(request.url.query) > MAX_QUERY_CHARS:
            raise QueryError(f"query string longer than {MAX_QUERY_CHARS} characters")
        items = request.query_params.multi_items()
        self.values: dict[str, str] = {}
        for name, value in items:
            if name not in self.allowed | ALWAYS:
                accepted = ", ".join(sorted(self.allowed)) or "none"
                raise QueryError(f"unknown query parameter {_shown(name)}; accepted here: {accepted}")
            if name in self.values:
                raise QueryError(f"query parameter {name} given more than once")
            self.values[name] = value

    def _raw(self, name: str) -> str | None:
        assert name in self.allowed, f"{name} is not declared for this route"
        raw = self.values.get(name)
        return None if raw is None or raw == "" else raw

    def integer(self, name: str, lo: int, hi: int, default: int | None = None) -> int | None:
        """A whole number in ``[lo, hi]`` (``default`` when absent)."""
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise QueryError(f"{name} must be a whole number from {lo} to {hi}, got {_shown(raw)}") from None
        if not lo <= value <= hi:
            raise QueryError(f"{name} must be from {lo} to {hi}, got {value}")
        return value

    def number(self, name: str, lo: float, hi: float, default: float | None = None) -> float | None:
        """A finite number in ``[lo, hi]`` (``default`` when absent)."""
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise QueryError(f"{name} must be a number from {lo:g} to {hi:g}, got {_shown(raw)}") from None
        if not (math.isfinite(value) and lo <= value <= hi):
            raise QueryError(f"{name} must be a number from {lo:g} to {hi:g}, got {_shown(raw)}")
        return value

    def text(self, name: str, max_chars: int = 128) -> str | None:
        """Printable text of at most ``max_chars`` characters (None when absent)."""
        raw = self._raw(name)
        if raw is None:
            return None
        raw = raw.strip()
        if len(raw) > max_chars:
            raise QueryError(f"{name} is {len(raw)} characters long; at most {max_chars} are accepted")
        if not raw.isprintable():
            raise QueryError(f"{name} contains control characters")
        return raw or None

    def choice(self, name: str, choices: Iterable[str], default: Any = None) -> Any:
        """One of ``choices`` (``default`` when absent)."""
        raw = self._raw(name)
        options = tuple(choices)
        if raw is None:
            return default
        if raw not in options:
            raise QueryError(f"{name} must be one of {', '.join(options)}, got {_shown(raw)}")
        return raw
