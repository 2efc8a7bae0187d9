"""Raw runs and reconstructions through Tiled, as the web page needs them.

Everything is read through a Tiled client (never from files), so the page works beside a site's
own Tiled as well as beside the embedded one. Keys from the browser are checked against
:data:`SAFE_KEY` before they reach Tiled, so a key cannot walk into another container.
A reconstruction's description, slices, histogram and 3D regions are read by
:class:`~bluesky_tomo_hpc.web.volume_reader.VolumeReader` (Tiled's HTTP API, one request a slice).
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
#: the most reconstructions whose listed metadata is kept
MAX_LISTED = 2000


class CatalogError(LookupError):
    """Something the page asked for is not there (or not ready); ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 404):
        super().__init__(message)
        self.status = status


class NoContainer(CatalogError):
    """Tiled has no such container yet: nothing written there, a normal state of a fresh catalog."""


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
        #: reconstruction key -> (when, metadata) as the last listing of the catalog saw it: the
        #: page opens a reconstruction from the table that listing filled (:meth:`listed_metadata`)
        self._listed: dict[str, tuple[float, dict[str, Any]]] = {}

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
            try:
                return client[name]  # one request (``name in client`` first would be two)
            except KeyError:
                raise NoContainer(f"Tiled has no '{name}' container yet (no scan written)") from None
        except CatalogError:
            raise
        except Exception as exc:
            with self._lock:
                self._client = None
            raise TiledUnavailable(f"Tiled is not reachable: {type(exc).__name__}: {exc}") from exc

    # -- raw runs ---------------------------------------------------------------------------
    def runs(self, *, scan_id: int | None = None, sample: str | None = None, plan: str | None = None,
             since: float | None = None, until: float | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Raw runs matching every given filter, newest first, each with its reconstructions
        (none, not an error, while the catalog has no raw container: no scan written yet)."""
        from tiled.queries import Key, Like

        try:
            results = self._container(self.raw_name)
        except NoContainer:
            return []
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
        listed: dict[str, tuple[float, dict[str, Any]]] = {}
        for key, node in itertools.islice(results.items(), limit):
            md = dict(node.metadata or {})
            listed[key] = (time.monotonic(), md)
            s = recon_summary(key, md)
            by_run.setdefault(s["raw_uid"], []).append(s)
        with self._lock:
            for key, seen in listed.items():
                self._listed.pop(key, None)
                self._listed[key] = seen
            while len(self._listed) > MAX_LISTED:  # the oldest first (insertion order)
                self._listed.pop(next(iter(self._listed)))
        for v in by_run.values():
            v.sort(key=lambda s: s["written_at"] or 0, reverse=True)
        return by_run

    def listed_metadata(self, key: str, max_age_s: float) -> dict[str, Any] | None:
        """The metadata of reconstruction ``key`` as a listing at most ``max_age_s`` ago saw it
        (outside data, as any metadata read from Tiled), else None."""
        with self._lock:
            hit = self._listed.get(key)
        return hit[1] if hit is not None and time.monotonic() - hit[0] <= max_age_s else None

    def reconstructions(self, *, kind: str | None = None, raw_uid: str | None = None,
                        limit: int = 50) -> list[dict[str, Any]]:
        """Reconstructions (optionally of one kind, of one run), newest first."""
        if raw_uid is not None:
            check_key(raw_uid, "run")
        allr = [s for v in self._recons_by_run(raw_uid).values() for s in v
                if kind is None or s["kind"] == kind]
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

    def preview(self, key: str, plane: str) -> np.ndarray:
        if plane not in PLANES:
            raise CatalogError(f"plane {plane!r} unknown: xy, xz or yz", 400)
        node = self.node(key)
        if f"preview_{plane}" not in node:
            raise CatalogError(f"reconstruction {key} has no {plane} preview")
        return np.asarray(node[f"preview_{plane}"].read())


def levels_for(shape: list[int], smallest: int = 32) -> int:
    """Multiscale levels down to about ``smallest`` voxels on the longest axis (at most 6)."""
    n = max(shape) if shape else 1
    return max(1, min(6, int(math.log2(max(1, n // smallest))) + 1))


#: the values of a reconstruction (line integrals in pixels, filtered back-projected)
UNIT = "1/voxel"
#: what the page shows of how a reconstruction was made, in this order (those present)
PROVENANCE_FIELDS = (
    "kind", "raw_uid", "scan_id", "sample", "plan_name", "params_hash", "params", "center", "center_method",
    "center_confidence", "center_uncertain", "center_source", "rows", "shape", "voxel_size_um", "warnings",
    "timings", "job_id", "executor", "ranks", "source", "raw_files", "ome_zarr", "tiff_dir", "provenance",
    "versions", "written_at",
)


def provenance(md: dict[str, Any]) -> dict[str, Any]:
    out = {k: md[k] for k in PROVENANCE_FIELDS if md.get(k) not in (None, "", [], {})}
    if "sample" in out:
        out["sample"] = sample_name(out["sample"])
    return out


def voxel_size_um(md: dict[str, Any]) -> float | None:
    """The voxel edge in micrometres when the node records it (or the detector pixel and the
    binning), else None: the page then gives positions in voxels only."""
    v = md.get("voxel_size_um")
    if isinstance(v, int | float) and v > 0:
        return float(v)
    pixel, binning = md.get("pixel_size_um"), (md.get("params") or {}).get("binning", 1)
    if isinstance(pixel, int | float) and pixel > 0 and isinstance(binning, int):
        return float(pixel) * binning
    return None


def recon_summary(key: str, md: Any) -> dict[str, Any]:
    """What a table row shows of one reconstruction node (a preview: also its progress, slice
    positions and warnings, so the page shows a stored preview whole)."""
    md = md or {}
    out = {"key": key, "raw_uid": md.get("raw_uid", ""), "kind": md.get("kind"),
           "params_hash": md.get("params_hash"), "center": md.get("center"),
           "center_confidence": md.get("center_confidence"), "state": md.get("state", "complete"),
           "written_at": _when(md.get("written_at")), "spec": RECON_SPEC}
    if md.get("kind") == "preview":
        from .live_feed import warnings_of

        check = md.get("center_check") or {}
        out["preview"] = {"used": md.get("n_projections_used"),
                          "expected": md.get("n_projections_expected"),
                          "skipped": md.get("n_projections_skipped"),
                          "indices": md.get("slice_indices") or {},
                          "center_source": md.get("center_source"), "confidence": check.get("peak"),
                          "warnings": warnings_of(dict(md))}
    return out
