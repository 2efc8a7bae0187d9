"""Tiled queries on sample and series metadata, for notebooks and ``reprocess`` alike.

::

    raw.search(Key("sample.name") == "ti64")
    raw.search(Key("sample.material.category") == "alloy")
    raw.search(Key("sample.conditions.temperature.si_value") > 500)   # K, whatever unit was typed
    raw.search(Key("series.id") == "heating-ti64-3f9c2a")

:func:`parse_where` turns ``"sample.conditions.temperature.si_value>500"`` (a command line's
``--where``) into such a query; keys are dotted names only, values YAML scalars.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
#: longest first, so ">=" is not read as ">"
OPERATORS = (">=", "<=", "!=", "==", ">", "<", "=")


class QueryError(ValueError):
    """A ``--where`` criterion that cannot be a query; the message says why."""


def parse_where(text: str) -> tuple[str, str, Any]:
    """``"key<op>value"`` -> ``(key, op, value)``; op one of >=, <=, !=, ==, >, <, = (same as ==)."""
    for op in OPERATORS:
        key, found, value = text.partition(op)
        if found:
            break
    else:
        raise QueryError(f"{text!r}: expected KEY=VALUE, KEY>VALUE, KEY<=VALUE ...")
    key = key.strip()
    if not re.match(KEY_PATTERN, key) or len(key) > 200:
        raise QueryError(f"{text!r}: the key must be a dotted name like sample.material.category")
    try:
        parsed = yaml.safe_load(value.strip()) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value.strip()
    if not isinstance(parsed, str | int | float | bool):
        parsed = value.strip()
    return key, "==" if op == "=" else op, parsed


def where_query(key: str, op: str, value: Any) -> Any:
    """A Tiled query object for ``key op value``."""
    from tiled.queries import Key

    k = Key(key)
    return {"==": lambda: k == value, "!=": lambda: k != value, ">": lambda: k > value,
            ">=": lambda: k >= value, "<": lambda: k < value, "<=": lambda: k <= value}[op]()


def series_query(series_id: str) -> Any:
    from tiled.queries import Key

    return Key("series.id") == series_id


def sample_queries(name: str) -> list[Any]:
    """Alternatives (any may match): the schema's ``sample.name``, and a bare-string ``sample``
    as older runs and plain ``md={"sample": "a"}`` store it."""
    from tiled.queries import Key

    return [Key("sample.name") == name, Key("sample") == name]
