"""Sources: Bluesky documents and scan files turned into the ScanSpec + FrameBatch stream.

Names are imported lazily so that a batch job that only needs :func:`load_scan` does not pay
for event-model and the document machinery.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TomoCallback": ".callback",
    "TomoRunRouter": ".documents",
    "DarkFlatSet": ".darkflat",
    "DarkFlatCache": ".darkflat",
    "tiled_dark_flat_resolver": ".resolvers",
    "load_scan": ".raw_files",
    "describe_scan": ".raw_files",
    "iter_file_stream": ".raw_files",
    "ScanDescription": ".raw_files",
    "recognise": ".recognise",
    "TomoLayout": ".recognise",
    "DEFAULT_PRESETS": ".recognise",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
