"""A data folder moved or restored elsewhere: the embedded catalog's registrations follow it.

Why: Tiled stores every asset as an absolute URI: the raw HDF5 files and the volumes registered
in place, its own uploaded arrays, its DuckDB tables. A data folder copied to another disk or
restored from a backup kept pointing at the old path, and every read of those nodes failed (the
web page answered "internal error" after 26 s of retries). The embedded server's catalog lives in
the data folder it serves (``<data>/tiled``), so at each start it records where that is
(``tiled/location.json``); when it finds itself elsewhere, it rewrites the URIs under the old data
folder to the new one, in one SQLite transaction, before serving, and says so in one line.
Paths outside the data folder (a raw-data disk of its own) are left as they are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

#: where the catalog's folder and its data folder were at the last start
MARKER = "location.json"


def _file_uri(path: Path) -> str:
    from tiled.utils import ensure_uri

    return ensure_uri(str(path))


def _duckdb_uri(directory: Path) -> str:
    from tiled.utils import ensure_uri

    return ensure_uri(f"duckdb:///{directory / 'storage.duckdb'}")


def follow_moved_folder(directory: Path, data_root: Path | None) -> int:
    """Rewrite the registrations of the catalog in ``directory`` if it moved since its last start
    (see the module docstring), then record where it is now; returns how many were rewritten."""
    directory = Path(directory).resolve()
    data_root = Path(data_root).resolve() if data_root is not None else None
    marker, db = directory / MARKER, directory / "catalog.db"
    rewritten = 0
    if marker.is_file() and db.is_file():
        try:
            last = json.loads(marker.read_text())
            old_dir = Path(last["directory"])
            old_root = Path(last["data_root"]) if last.get("data_root") else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s is unreadable (%s); not checked for a moved folder", marker, exc)
            old_dir, old_root = directory, None
        if old_dir != directory:
            pairs = [(_duckdb_uri(old_dir), _duckdb_uri(directory), False)]
            if old_root is not None and data_root is not None and old_root != data_root:
                pairs.append((_file_uri(old_root), _file_uri(data_root), True))
            pairs.append((_file_uri(old_dir), _file_uri(directory), True))
            rewritten = _rewrite(db, pairs)
            where = f"{old_root} to {data_root}" if old_root and data_root else f"{old_dir} to {directory}"
            log.warning("the data folder moved from %s: %d registration(s) in its catalog now point "
                        "there", where, rewritten)
    record = {"directory": str(directory), "data_root": str(data_root) if data_root else None}
    tmp = marker.with_suffix(".tmp")
    with contextlib.suppress(OSError):  # a read-only folder serves as it is
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, marker)
    return rewritten


def _rewrite(db: Path, pairs: list[tuple[str, str, bool]]) -> int:
    """``(old, new, as_prefix)``: each asset URI equal to ``old`` (or under it, ``as_prefix``)
    gets ``new`` instead; all or nothing."""
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        total = 0
        for old, new, as_prefix in pairs:
            n = len(old)
            cur = con.execute(
                "UPDATE assets SET data_uri = ? || substr(data_uri, ?) "
                "WHERE data_uri = ? OR (? AND substr(data_uri, 1, ?) = ?)",
                (new, n + 1, old, int(as_prefix), n + 1, old + "/"))
            total += cur.rowcount
        con.execute("COMMIT")
        return total
    except sqlite3.Error:
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()
