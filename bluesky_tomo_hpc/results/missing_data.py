"""A node whose registered files are gone answers at once, in one line naming the node and the file.

Why: Tiled keeps every registered file (a volume registered in place, a raw HDF5 file, its own
arrays) as an absolute URI. When the file is deleted, or the data folder moved in a way
:mod:`.catalog_relocation` cannot follow (a Tiled outside the data folder, a file on another
disk), reading the node failed deep inside an adapter (a ``TypeError`` from Zarr, an ``OSError``
from HDF5): Tiled answered "500 Internal server error", which its client retries, so a user
waited ~30 s for "internal error".

:class:`MissingDataAnswer` wraps the Tiled app: only when a request under the API ends in a 500,
it looks up the node's assets in the catalog (read-only SQLite) and, if a file of theirs is
missing, answers :data:`MISSING_DATA_STATUS` (a 4xx: clients do not retry it) with
``{"detail": "node 'processed/x' cannot be read: its data file /a/b is missing ..."}`` instead.
Requests that succeed cost nothing; the path in the answer is the server's own registration,
never a request value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

#: the answer for a node whose data file is missing: 424 Failed Dependency (a 4xx: not retried)
MISSING_DATA_STATUS = 424
#: route segments before the node path in Tiled's API (``/api/v1/array/full/<path>``, ``/metadata/<path>``)
_ROUTE_DEPTHS = (2, 1)


def asset_path(uri: str) -> Path | None:
    """The local file of an asset URI (``file://localhost/...``, ``duckdb:///...``), else None."""
    parts = urlsplit(uri)
    if parts.scheme in ("file", "duckdb") and parts.path:
        return Path(unquote(parts.path))
    return None


def missing_files(catalog_db: Path, segments: list[str]) -> tuple[str, list[Path]] | None:
    """(node path, its missing files) for the node named by ``segments`` (the URL after the API
    route), or None when no node matches or none of its files is missing."""
    with contextlib.closing(sqlite3.connect(f"{catalog_db.resolve().as_uri()}?mode=ro", uri=True,
                                            timeout=5)) as db:
        for depth in _ROUTE_DEPTHS:
            keys = segments[depth:]
            node = _resolve(db, keys)
            if node is None:
                continue
            rows = db.execute(
                "SELECT assets.data_uri, data_sources.mimetype, data_sources.structure_family"
                " FROM data_sources"
                " JOIN data_source_asset_association AS a ON a.data_source_id = data_sources.id"
                " JOIN assets ON assets.id = a.asset_id WHERE data_sources.node_id = ?", (node,))
            gone = [p for uri, mimetype, family in rows
                    if (p := asset_path(uri)) is not None and _gone(p, mimetype or "", family or "")]
            return ("/".join(keys), gone) if gone else None
    return None


def _gone(path: Path, mimetype: str, family: str) -> bool:
    """The file is missing; for a Zarr array, its array metadata is (Tiled's ``zarr.open`` of a
    missing path leaves an empty group there, so the folder alone proves nothing)."""
    if not path.exists():
        return True
    if "zarr" not in mimetype or family != "array" or (path / ".zarray").is_file():
        return False
    try:
        return json.loads((path / "zarr.json").read_text()).get("node_type") != "array"
    except (OSError, ValueError, AttributeError):
        return True


def _resolve(db: sqlite3.Connection, keys: list[str]) -> int | None:
    if not keys:
        return None
    (root,) = db.execute("SELECT id FROM nodes WHERE parent IS NULL").fetchone() or (None,)
    node = root
    for key in keys:
        row = db.execute("SELECT id FROM nodes WHERE parent = ? AND key = ?", (node, key)).fetchone()
        if row is None:
            return None
        node = row[0]
    return node


def missing_data_line(node: str, gone: list[Path]) -> str:
    more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
    return (f"node '{node}' cannot be read: its data file {gone[0]} is missing{more} (deleted, or the "
            "data folder moved); restore it or register the node again")


def missing_data_detail(exc: BaseException) -> str | None:
    """The one line of a Tiled client error that is this answer (for the web page), else None."""
    response = getattr(exc, "response", None)
    if getattr(response, "status_code", None) != MISSING_DATA_STATUS:
        return None
    try:
        return str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):
        return None


class MissingDataAnswer:
    """ASGI wrapper of a Tiled app over ``catalog_db``: see the module docstring."""

    def __init__(self, app: Any, catalog_db: Path, prefix: str = "/api/v1/"):
        self.app, self.catalog_db, self.prefix = app, Path(catalog_db), prefix

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        replaced = False

        async def checked_send(message: dict) -> None:
            nonlocal replaced
            if replaced:
                return  # the original 500's body
            if message["type"] == "http.response.start" and message["status"] == 500:
                line = await self._missing_line(scope["path"])
                if line is not None:
                    replaced = True
                    body = json.dumps({"detail": line}).encode()
                    await send({"type": "http.response.start", "status": MISSING_DATA_STATUS,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    return
            await send(message)

        try:
            await self.app(scope, receive, checked_send)
        except Exception:
            if not replaced:  # the server's error middleware re-raises after its 500
                raise

    async def _missing_line(self, path: str) -> str | None:
        from starlette.concurrency import run_in_threadpool  # starlette is a core dependency

        segments = [s for s in path[len(self.prefix):].split("/") if s]
        try:
            found = await run_in_threadpool(missing_files, self.catalog_db, segments)
        except (sqlite3.Error, OSError) as exc:
            log.warning("could not check %s for missing data files (%s)", path, exc)
            return None
        if found is None:
            return None
        line = missing_data_line(*found)
        log.error("%s", line)
        return line
