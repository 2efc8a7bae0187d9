"""Raw runs and reconstructions through Tiled, as the web page needs them.

Everything is read through a Tiled client (never from files), so the page works beside a site's
own Tiled as well as beside the embedded one. Keys from the browser are checked against
:data:`SAFE_KEY` before they reach Tiled, so a key cannot walk into another container.
Multiscale levels are strided reads of the full-resolution volume (level ``L`` = every
``2**L``-th voxel), read slice by slice so memory stays bounded whatever the volume's size.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..metadata.sample import sample_name
from ..results.tiled_results import RECON_SPEC

SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
PLANES = {"xy": 0, "xz": 1, "yz": 2}  # plane -> the axis its index runs along


class CatalogError(LookupError):
    """Something the page asked for is not there (or not ready); ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 404):
        super().__init__(message)
        self.status = status


class TiledUnavailable(CatalogError):
    def __init__(self, message: str):
        super().__init__(message, status=503)


def check_key(key: str, what: str) -> str:
    if not SAFE_KEY.match(key or ""):
        raise CatalogError(f"{what} {key!r} is not a valid name (letters, digits, '.', '_', '-')", 400)
    return key


def _when(t: Any) -> float | None:
    return float(t) if isinstance(t, int | float) else None


class Catalog:
    """The ``raw`` and ``processed`` containers of one Tiled server (client made on first use,
    made again after a failure, so the page recovers when Tiled comes back)."""

    def __init__(self, client_factory: Callable[[], Any], raw: str = "raw", processed: str = "processed",
                 *, probe: Callable[[], str | None] | None = None, probe_every_s: float = 0.0):
        self._factory = client_factory
        self.raw_name, self.processed_name = raw, processed
        self._client: Any = None
        self._lock = threading.Lock()
        #: returns why Tiled is unusable, or None; asked before the client is used (at most every
        #: ``probe_every_s``; 0: every time), because Tiled's client retries a refused connection
        #: for ~25 s and the page should say at once that Tiled is down
        self._probe = probe
        self._probe_every_s = probe_every_s
        self._probed_ok_at = -1e9

    def client(self) -> Any:
        if self._probe is not None and time.monotonic() - self._probed_ok_at > self._probe_every_s:
            why = self._probe()
            if why:
                raise TiledUnavailable(f"Tiled is not reachable: {why}")
            self._probed_ok_at = time.monotonic()
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._factory()
                except Exception as exc:
                    raise TiledUnavailable(f"Tiled is not reachable: {type(exc).__name__}: {exc}") from exc
            return self._client

    def _container(self, name: str) -> Any:
        try:
            client = self.client()
            if name not in client:
                raise CatalogError(f"Tiled has no '{name}' container yet (no scan written)")
            return client[name]
        except CatalogError:
            raise
        except Exception as exc:
            with self._lock:
                self._client = None
            raise TiledUnavailable(f"Tiled is not reachable: {type(exc).__name__}: {exc}") from exc

    # -- raw runs ---------------------------------------------------------------------------
    def runs(self, *, scan_id: int | None = None, sample: str | None = None, plan: str | None = None,
             since: float | None = None, until: float | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Raw runs matching every given filter, newest first, each with its reconstructions."""
        from tiled.queries import Key, Like

        results = self._container(self.raw_name)
        if scan_id is not None:
            results = results.search(Key("start.scan_id") == int(scan_id))
        if sample:
            results = results.search(Like("start.sample", f"%{sample}%"))
        if plan:
            results = results.search(Key("start.plan_name") == plan)
        if since is not None:
            results = results.search(Key("start.time") >= float(since))
        if until is not None:
            results = results.search(Key("start.time") <= float(until))
        recons = self._recons_by_run()
        out = []
        for uid, node in itertools.islice(results.sort(("start.time", -1)).items(), max(1, min(limit, 500))):
            out.append({**self._run_summary(uid, node.metadata), "reconstructions": recons.get(uid, [])})
        return out

    @staticmethod
    def _run_summary(uid: str, md: Any) -> dict[str, Any]:
        start, stop = md.get("start") or {}, md.get("stop") or {}
        # the sample's name: start["sample"] is a dict since the sample schema (a string before)
        return {"uid": uid, "scan_id": start.get("scan_id"), "sample": sample_name(start.get("sample")),
                "plan": start.get("plan_name"), "time": _when(start.get("time")),
                "state": stop.get("exit_status", "running") if stop else "running",
                "num_events": dict(stop.get("num_events") or {})}

    def run(self, uid: str) -> dict[str, Any]:
        check_key(uid, "run")
        raw = self._container(self.raw_name)
        try:
            node = raw[uid]
        except KeyError:
            raise CatalogError(f"no run {uid!r} in Tiled's '{self.raw_name}' container") from None
        recons = self._recons_by_run(uid)
        return {**self._run_summary(uid, node.metadata), "reconstructions": recons.get(uid, [])}

    # -- reconstructions --------------------------------------------------------------------
    def _recons_by_run(self, uid: str | None = None, limit: int = 2000) -> dict[str, list[dict[str, Any]]]:
        from tiled.queries import Key

        try:
            results = self._container(self.processed_name)
        except CatalogError as exc:
            if exc.status == 404:
                return {}
            raise
        if uid is not None:
            results = results.search(Key("raw_uid") == uid)
        by_run: dict[str, list[dict[str, Any]]] = {}
        for key, node in itertools.islice(results.items(), limit):
            s = recon_summary(key, node.metadata)
            by_run.setdefault(s["raw_uid"], []).append(s)
        for v in by_run.values():
            v.sort(key=lambda s: s["written_at"] or 0, reverse=True)
        return by_run

    def reconstructions(self, *, kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Reconstructions (optionally of one kind), newest first."""
        allr = [s for v in self._recons_by_run().values() for s in v if kind is None or s["kind"] == kind]
        allr.sort(key=lambda s: s["written_at"] or 0, reverse=True)
        return allr[:limit]

    def node(self, key: str) -> Any:
        check_key(key, "reconstruction")
        processed = self._container(self.processed_name)
        try:
            return processed[key]
        except KeyError:
            raise CatalogError(
                f"no reconstruction {key!r} in Tiled's '{self.processed_name}' container") from None

    def info(self, key: str) -> dict[str, Any]:
        node = self.node(key)
        out = recon_summary(key, node.metadata)
        children = list(node)
        out["previews"] = [c.removeprefix("preview_") for c in children if c.startswith("preview_")]
        if "volume" in children:
            shape = [int(n) for n in node["volume"].shape]
            out["volume"] = {"shape": shape, "levels": levels_for(shape)}
        return out

    def volume(self, key: str) -> tuple[Any, dict[str, Any]]:
        """The volume array client of ``key``; a clear error when it has none or is being written."""
        node = self.node(key)
        md = node.metadata
        if "volume" not in node:
            if md.get("state") == "writing":
                raise CatalogError(
                    f"reconstruction {key} is still being written; its volume is not there yet", 409)
            raise CatalogError(f"reconstruction {key} has no volume (kind {md.get('kind')!r}: slices only)")
        return node["volume"], md

    def slice(
        self, key: str, plane: str, index: int | None, level: int = 0
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """One slice of the volume at a multiscale level (a strided read through Tiled)."""
        if plane not in PLANES:
            raise CatalogError(f"plane {plane!r} unknown: xy, xz or yz", 400)
        arr, md = self.volume(key)
        shape = [int(n) for n in arr.shape]
        levels = levels_for(shape)
        if not 0 <= level < levels:
            raise CatalogError(f"level {level} out of range: this volume has levels 0-{levels - 1}", 400)
        axis = PLANES[plane]
        n = shape[axis]
        index = n // 2 if index is None else int(index)
        if not 0 <= index < n:
            raise CatalogError(f"{plane} index {index} out of range 0-{n - 1}", 400)
        s = 2 ** level
        sel: list[Any] = [slice(None, None, s)] * 3
        sel[axis] = index
        try:
            data = np.asarray(arr[tuple(sel)])
        except Exception as exc:
            if md.get("state") == "writing":
                raise CatalogError(f"reconstruction {key} is still being written; slice {index} is not "
                                   "there yet", 409) from exc
            raise CatalogError(
                f"could not read {plane} slice {index} of {key}: {type(exc).__name__}", 502) from exc
        return data, {"shape": shape, "index": index, "level": level, "levels": levels}

    def preview(self, key: str, plane: str) -> np.ndarray:
        if plane not in PLANES:
            raise CatalogError(f"plane {plane!r} unknown: xy, xz or yz", 400)
        node = self.node(key)
        if f"preview_{plane}" not in node:
            raise CatalogError(f"reconstruction {key} has no {plane} preview")
        return np.asarray(node[f"preview_{plane}"].read())

    def small_volume(self, key: str, max_side: int = 128) -> np.ndarray:
        """The volume shrunk by striding to at most ``max_side`` per axis, read one slice at a time."""
        arr, md = self.volume(key)
        if md.get("state") == "writing":
            raise CatalogError(
                f"reconstruction {key} is still being written; try the 3D view when it is complete", 409)
        shape = [int(n) for n in arr.shape]
        s = max(1, math.ceil(max(shape) / max_side))
        return np.stack([np.asarray(arr[z, ::s, ::s]) for z in range(0, shape[0], s)])


def levels_for(shape: list[int], smallest: int = 32) -> int:
    """Multiscale levels down to about ``smallest`` voxels on the longest axis (at most 6)."""
    n = max(shape) if shape else 1
    return max(1, min(6, int(math.log2(max(1, n // smallest))) + 1))


def recon_summary(key: str, md: Any) -> dict[str, Any]:
    """What a table row shows of one reconstruction node."""
    md = md or {}
    return {"key": key, "raw_uid": md.get("raw_uid", ""), "kind": md.get("kind"),
            "params_hash": md.get("params_hash"), "center": md.get("center"),
            "center_confidence": md.get("center_confidence"), "state": md.get("state", "complete"),
            "written_at": _when(md.get("written_at")), "spec": RECON_SPEC}
