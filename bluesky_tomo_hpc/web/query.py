"""Query parameters of the page's API as numbers, with a one-line 400 naming the bad one."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from .catalog import CatalogError


def number(request: Request, name: str, kind: type = int, default: Any = None) -> Any:
    """Query parameter ``name`` as ``kind`` (int or float), or ``default`` when absent."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise CatalogError(f"{name} must be {what}, got {raw!r}", 400) from None


def bounded(request: Request, name: str, low: int, high: int, default: int) -> int:
    """A whole-number parameter inside ``low``-``high`` (inclusive), else a 400 saying the range."""
    value = number(request, name, int, default)
    if not low <= value <= high:
        raise CatalogError(f"{name} must be between {low} and {high}, got {value}", 400)
    return value
