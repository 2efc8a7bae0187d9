"""SciCat payloads made safe to send: keys MongoDB accepts, bounded text, sizes and depth.

Why: a SciCat dataset carries document metadata (``start["tomo"]``, the sample, the series)
that anyone who can start a scan or feed a worker chooses. SciCat stores it in MongoDB, where a
key starting with ``$`` is an operator and a ``.`` walks into a sub-document; a 1 MB sample
name or a deep, wide mapping would be refused (HTTP 413) or slow every query on the catalogue.
:func:`sanitised` returns a copy with ``$``/``.`` in keys replaced by ``_`` (a short hash added
when two keys would then clash), text cut at :data:`MAX_TEXT` characters and control characters
replaced, lists cut at :data:`MAX_ITEMS`, nesting cut at :data:`MAX_DEPTH`, numbers that are not
finite replaced by None (JSON has no NaN), secrets masked, and the whole payload kept under
:data:`MAX_PAYLOAD_CHARS`; each cut is marked in the value so nothing is changed silently.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

from ..untrusted.secrets_mask import mask_text

#: longest text value kept (a description; names are cut shorter by the payload builders)
MAX_TEXT = 4096
#: longest key kept
MAX_KEY = 128
#: items kept of a list
MAX_ITEMS = 1000
#: nesting kept
MAX_DEPTH = 12
#: the whole payload, in characters of JSON (SciCat's own limit on a request body is larger)
MAX_PAYLOAD_CHARS = 512 * 1024
#: what replaces what was cut
CUT = "[cut: too long for SciCat]"

_BAD_KEY_CHARS = re.compile(r"[.$\x00-\x1f]")


def _text(value: str, limit: int) -> str:
    value = "".join(c if c.isprintable() or c in "\t\n" else "?" for c in mask_text(value[: limit + 64]))
    return value if len(value) <= limit else value[: max(0, limit - len(CUT) - 1)] + " " + CUT


def safe_key(key: object) -> str:
    """A MongoDB-safe key: no ``$``, no ``.``, no control character, at most :data:`MAX_KEY`."""
    text = str(key)
    clean = _BAD_KEY_CHARS.sub("_", text)[:MAX_KEY]
    if clean == text:
        return clean
    return f"{clean[: MAX_KEY - 9]}_{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


class _Budget:
    def __init__(self, chars: int):
        self.left = chars

    def take(self, n: int) -> bool:
        self.left -= n
        return self.left >= 0


def _clean(value: Any, depth: int, budget: _Budget) -> Any:
    if value is None or isinstance(value, bool):
        budget.take(5)
        return value
    if isinstance(value, int | float):
        budget.take(24)
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        text = _text(value, min(MAX_TEXT, max(0, budget.left)))
        return text if budget.take(len(text) + 2) else CUT
    if depth >= MAX_DEPTH:
        budget.take(len(CUT))
        return CUT
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if budget.left <= 0:
                out["_cut"] = CUT
                break
            key = safe_key(k)
            budget.take(len(key) + 4)
            out[key] = _clean(v, depth + 1, budget)
        return out
    if isinstance(value, list | tuple):
        items = [_clean(v, depth + 1, budget) for v in list(value)[:MAX_ITEMS] if budget.left > 0]
        if len(items) < len(value):
            items.append(CUT)
        return items
    return _clean(str(value), depth, budget)


def sanitised(payload: Mapping[str, Any], max_chars: int = MAX_PAYLOAD_CHARS) -> dict[str, Any]:
    """A copy of ``payload`` that SciCat and MongoDB take as it is (see the module docstring)."""
    return _clean(dict(payload), 0, _Budget(max_chars))


def bounded_name(value: object, limit: int = 256) -> str | None:
    """A one-line name (dataset name, sample id) of at most ``limit`` characters, or None."""
    if value is None:
        return None
    return _text(" ".join(str(value)[: limit * 4].split()), limit) or None
