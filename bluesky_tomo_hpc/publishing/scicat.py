"""SciCat: a raw dataset per scan and a derived dataset per reconstruction, through ``pyscicat``.

What goes where:

* raw dataset, pid ``<pid_prefix><run uid>``: instrument and scan metadata (``start["tomo"]``),
  the sample (``start["sample"]``; its ``id`` or name is SciCat's ``sampleId``), the series,
  the Tiled address of the raw run, and the raw HDF5 files as an OrigDatablock;
* derived dataset, pid ``<pid_prefix><run uid>-<params hash>-<kind>``: ``inputDatasets`` is the
  raw pid (the link), ``jobParameters`` the reconstruction parameters and centre, the software
  versions, the sample again, and where the result lives (Tiled node; Zarr/TIFF folder).

Idempotent: pids are chosen here (the SciCat account must be allowed to choose them) and looked
up before each create, so a replayed scan, a retry after a timeout or a restart never makes a
second dataset. Every dataset first goes to the :class:`~.scicat_outbox.ScicatOutbox`; a 4xx
answer (SciCat refusing the dataset) is FAILED with SciCat's reason, anything else is retried
with a doubling delay. Nothing here ever raises into a scan.

SciCat cannot run in this project's CI: the tests drive the real ``pyscicat`` client against
recorded, realistic SciCat responses at the HTTP layer (``tests/fixtures/recorded/scicat.json``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..extras import require
from ..metadata.sample import sample_name
from ..model import name_or_hash
from .scicat_outbox import OutboxItem, ScicatOutbox
from .scicat_payload import bounded_name, sanitised

log = logging.getLogger(__name__)

#: HTTP statuses that mean "SciCat will not take this as it is": no retry until someone acts
PERMANENT = frozenset({400, 401, 403, 404, 409, 413, 422})
MAX_DELAY_S = 3600.0


class ScicatRefused(RuntimeError):
    """SciCat answered with a permanent error (status in :data:`PERMANENT`)."""


def _iso(t: float | None) -> str:
    return _dt.datetime.fromtimestamp(t or 0.0, _dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _status(exc: BaseException) -> int | None:
    """The HTTP status in a pyscicat error (it reports the response body, which NestJS fills
    with ``statusCode``), or None for a network failure."""
    match = re.search(r"'statusCode':\s*(\d{3})", str(exc))
    return int(match.group(1)) if match else None


def _common_folder(files: list[str]) -> str:
    if not files:
        return ""
    return os.path.commonpath([str(Path(f).parent) for f in files])


def raw_dataset(spec: Any, end: Any, settings: Any, *, tiled_uri: str | None = None) -> dict[str, Any]:
    """The RawDataset of a scan, as the dict pyscicat's model takes (JSON-able, for the outbox)."""
    md = spec.metadata if isinstance(spec.metadata, dict) else {}
    start = md.get("start", {})
    sample = md.get("sample")
    name = sample_name(sample)
    series = md.get("series")
    sample_id = (sample.get("id") if isinstance(sample, dict) else None) or name
    material = (sample.get("material") or {}).get("category") if isinstance(sample, dict) else None
    keywords = ["tomography", *(bounded_name(k, 64) for k in (material, series and series.get("id")) if k)]
    name = bounded_name(name, 128)
    payload = {
        "pid": raw_pid(settings, spec.run_uid),
        "type": "raw",
        "datasetName": bounded_name(f"{spec.plan_name or 'scan'} "
                                    f"{spec.scan_id if spec.scan_id is not None else ''} {name or ''}"),
        "description": bounded_name(f"tomography scan {spec.run_uid}"
                                    + (f" of sample {name}" if name else ""), 1024),
        "owner": settings.owner, "ownerGroup": settings.owner_group, "accessGroups": settings.access_groups,
        "contactEmail": settings.contact_email, "principalInvestigator": settings.principal_investigator,
        "creationLocation": settings.creation_location, "instrumentId": settings.instrument_id,
        "creationTime": _iso(start.get("time")), "endTime": _iso(getattr(end, "time", None)),
        "sourceFolder": _common_folder(list(spec.raw_files)) or f"bluesky:{spec.run_uid}",
        "sourceFolderHost": settings.source_host, "dataFormat": "Bluesky run (HDF5 frames)",
        "sampleId": bounded_name(sample_id, 128), "keywords": keywords,
        "scientificMetadata": {
            "run_uid": spec.run_uid, "scan_id": spec.scan_id, "plan_name": spec.plan_name,
            "exit_status": getattr(end, "exit_status", None), "tomo": md.get("tomo"), "sample": sample,
            "series": series, "frame_shape": list(spec.frame_shape), "tiled": {"raw": tiled_uri},
        },
    }
    return sanitised({k: v for k, v in payload.items() if v is not None})


def raw_pid(settings: Any, run_uid: object) -> str:
    """The raw dataset's pid: the prefix and the run uid made a safe name (a hostile uid never
    walks the SciCat API's path: ``../``, ``?``, 10 kB)."""
    return f"{settings.pid_prefix}{name_or_hash(run_uid, 'run uid')}"


def raw_datablock(spec: Any) -> dict[str, Any] | None:
    """The OrigDatablock of the raw files that exist here (paths relative to sourceFolder)."""
    files = [Path(f) for f in spec.raw_files if Path(f).is_file()]
    if not files:
        return None
    folder = _common_folder([str(f) for f in files])
    entries = [{"path": os.path.relpath(f, folder), "size": f.stat().st_size,
                "time": _iso(f.stat().st_mtime)} for f in files]
    return {"size": sum(e["size"] for e in entries), "dataFileList": entries}


def derived_dataset(spec: Any, outcome: Any, settings: Any, *, kind: str = "full",
                    location: str | None = None) -> dict[str, Any]:
    """The DerivedDataset of one reconstruction, linked to the raw dataset by ``inputDatasets``."""
    from ..results.provenance import software_versions

    result = outcome.result
    params = result.params
    md = spec.metadata if isinstance(spec.metadata, dict) else {}
    raw = raw_pid(settings, spec.run_uid)
    payload = {
        "pid": f"{raw}-{params.params_hash}-{kind}",
        "type": "derived",
        "datasetName": bounded_name(f"reconstruction ({kind}) of {str(spec.run_uid)[:8]}"),
        "description": bounded_name(f"{kind} tomographic reconstruction of run {spec.run_uid}", 1024),
        "owner": settings.owner, "ownerGroup": settings.owner_group, "accessGroups": settings.access_groups,
        "contactEmail": settings.contact_email, "investigator": settings.principal_investigator,
        "creationTime": _iso(time.time()),
        "inputDatasets": [raw],
        "usedSoftware": [f"{k} {v}" for k, v in software_versions().items()],
        "jobParameters": {"params": params.model_dump(mode="json"), "params_hash": params.params_hash,
                          "center": float(result.center),
                          "center_confidence": float(result.center_confidence)},
        "sourceFolder": location or f"tiled:processed/{raw}-{params.params_hash}-{kind}",
        "sourceFolderHost": settings.source_host,
        "keywords": ["tomography", "reconstruction"],
        "scientificMetadata": {"run_uid": spec.run_uid, "kind": kind, "shape": list(result.volume.shape),
                               "sample": md.get("sample"), "series": md.get("series"),
                               "location": location},
    }
    return sanitised({k: v for k, v in payload.items() if v is not None})


#: what asks for pyscicat, in the words of the setting
SCICAT_FEATURE = "SciCat publishing (scicat.uri in the settings)"


class ScicatPublisher:
    """Queues datasets in the outbox and publishes them on its own thread (never the caller's).

    ``client_factory()`` returns a ``pyscicat.client.ScicatClient`` (made on first use, so a
    SciCat that is down at start-up costs nothing but a retry).
    """

    def __init__(self, settings: Any, outbox: ScicatOutbox, client_factory: Callable[[], Any] | None = None,
                 *, start_thread: bool = True):
        # pyscicat is the scicat extra: absent, one line naming it here, not a failing thread later
        require("pyscicat.client", SCICAT_FEATURE)
        self.settings = settings
        self.outbox = outbox
        self._client_factory = client_factory or self._default_client
        self._client: Any = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if start_thread:
            self._thread = threading.Thread(target=self._loop, name="scicat", daemon=True)
            self._thread.start()

    def _default_client(self) -> Any:
        ScicatClient = require("pyscicat.client", SCICAT_FEATURE).ScicatClient

        if not self.settings.token:
            raise ScicatRefused(f"no SciCat token: set ${self.settings.token_env}")
        return ScicatClient(self.settings.uri, token=self.settings.token,
                            timeout_seconds=self.settings.timeout_s)

    # -- queueing (any thread) ------------------------------------------------------------------
    def queue_raw(self, spec: Any, end: Any, tiled_uri: str | None = None) -> str:
        payload = raw_dataset(spec, end, self.settings, tiled_uri=tiled_uri)
        pid = payload["pid"]
        self.outbox.put(pid, "raw", spec.run_uid, payload)
        datablock = raw_datablock(spec)
        if datablock is not None:
            self.outbox.put(f"{pid}#origdatablock", "datablock", spec.run_uid, datablock, parent_pid=pid)
        self._wake.set()
        return pid

    def queue_derived(self, outcome: Any, kind: str = "full") -> str | None:
        spec = getattr(outcome, "spec", None)
        if not outcome.ok or outcome.result is None or spec is None:
            return None
        payload = derived_dataset(spec, outcome, self.settings, kind=kind, location=outcome.location or None)
        self.outbox.put(payload["pid"], "derived", spec.run_uid, payload,
                        parent_pid=payload["inputDatasets"][0])
        self._wake.set()
        return payload["pid"]

    # -- publishing (the publisher's thread, or a test calling it) ----------------------------------
    def publish_due(self) -> list[OutboxItem]:
        """Try every due dataset once; returns them as they are now."""
        with self._lock:
            for item in self.outbox.due():
                self._publish_one(item)
            return self.outbox.items()

    def _delay(self, attempts: int) -> float | None:
        if attempts >= self.settings.max_retries:
            return None
        return min(MAX_DELAY_S, self.settings.retry_delay_s * 2 ** attempts)

    def _publish_one(self, item: OutboxItem) -> None:
        if item.parent_pid is not None and self.outbox.get(item.parent_pid).state != "DONE":
            return  # the raw dataset first: a link to a missing dataset would be refused
        try:
            client = self._client = self._client or self._client_factory()
            self._create_if_missing(client, item)
        except ScicatRefused as exc:
            log.error("SciCat refused dataset %s: %s", item.pid, exc)
            self.outbox.failed(item.pid, str(exc), retry_in=None)
            return
        except Exception as exc:
            status = _status(exc)
            reason = f"{type(exc).__name__}: {exc}"
            if status in PERMANENT:
                log.error("SciCat refused dataset %s (HTTP %s): %s", item.pid, status, exc)
                self.outbox.failed(item.pid, reason, retry_in=None)
                return
            delay = self._delay(item.attempts)
            log.warning("SciCat dataset %s not published (%s); %s", item.pid, reason,
                        f"retry in {delay:.3g} s" if delay is not None else "out of tries")
            self.outbox.failed(item.pid, reason, retry_in=delay)
            return
        self.outbox.done(item.pid)
        log.info("SciCat dataset %s published", item.pid)

    @staticmethod
    def _exists(client: Any, pid: str) -> bool:
        """Whether SciCat has ``pid``: older backends answer 200 with no body, newer 404."""
        try:
            return client.datasets_get_one(pid) is not None
        except Exception as exc:
            if _status(exc) == 404:
                return False
            raise

    def _create_if_missing(self, client: Any, item: OutboxItem) -> None:
        model_of = require("pyscicat.model", SCICAT_FEATURE)
        models = {"raw": model_of.RawDataset, "derived": model_of.DerivedDataset,
                  "datablock": model_of.CreateDatasetOrigDatablockDto}
        try:
            model = models[item.kind](**item.payload)
        except Exception as exc:  # our payload does not fit pyscicat's model: a bug or bad settings
            raise ScicatRefused(f"{item.kind} does not fit pyscicat's model: {exc}") from None
        if item.kind == "datablock":
            if client.datasets_origdatablocks_get_one(item.parent_pid):
                log.info("SciCat already has the files of %s; not added again", item.parent_pid)
                return
            client.datasets_origdatablock_create(item.parent_pid, model)
            return
        if self._exists(client, item.pid):
            log.info("SciCat already has dataset %s; not created again", item.pid)
            return
        client.datasets_create(model)

    # -- the thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish_due()
            except Exception:  # the outbox keeps everything; try again later
                log.exception("SciCat publishing round failed")
            pending = [i.next_try for i in self.outbox.items() if i.state in ("PENDING", "RETRY_WAIT")]
            wait = min([max(0.0, t - time.time()) for t in pending if t is not None] + [60.0])
            self._wake.wait(wait)
            self._wake.clear()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)


class ScicatRawSink:
    """A sink that queues the raw dataset of each scan when it ends (frames are not its business)."""

    def __init__(self, publisher: ScicatPublisher, raw_uri: Callable[[str], str | None] | None = None):
        self.publisher = publisher
        self.raw_uri = raw_uri
        self._spec: Any = None

    def open(self, spec: Any) -> None:
        self._spec = spec

    def add(self, batch: Any) -> None:
        pass

    def close(self, end: Any) -> None:
        spec, self._spec = self._spec, None
        if spec is not None:
            self.publisher.queue_raw(spec, end, self.raw_uri(spec.run_uid) if self.raw_uri else None)
