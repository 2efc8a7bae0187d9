"""The streaming worker: one process that turns live scans into previews and volumes.

Fed by (a) Bluesky documents over 0MQ (RunEngine ``Publisher`` -> ``bluesky-0MQ-proxy`` ->
``RemoteDispatcher`` here, msgpack on both ends: :mod:`..sources.zmq_documents`), run through the same
:class:`TomoRunRouter` as the in-process callback; or (b) EPICS PV Access NTNDArray frames
(:class:`~.sources.pva.PvaSource`). Both give the same ScanSpec / FrameBatch stream, which fans out per run to
  * a :class:`PreviewSink` (three live slices -> 0MQ PUB, TIFF/PNG files, Tiled at the final), and
  * a :class:`FullVolumeSink` (the engine at stop; CuPy on a GPU, chunked CPU otherwise).

Why a journal (:mod:`.run_journal`): a worker killed mid-scan has lost the run's start,
descriptor and resource documents, which the RunEngine will not send again; restarted, it replays
the journaled documents through the router, which re-reads the frames from the HDF5 files they
point to, then carries on with the live documents. The RunEngine never waits on any of this: its
Publisher's PUB socket drops rather than blocks.

Why a stop timeout: a run whose stop document never comes (the worker was down when it was
sent, 0MQ dropped it, the RunEngine died) would keep its preview and volume waiting for ever.
A run rebuilt from the journal first asks Tiled for its stop (the raw run is there when the
RunEngine's TiledWriter wrote it); a run with no new frame for ``stop_timeout_s`` that Tiled has
no stop for is given up, and the worker says so (log, ``errors``, the run's error list): its raw
data is untouched and ``bluesky-tomo-hpc reprocess --uid`` reconstructs it later.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..model import ScanEnd
from ..settings import Settings, load_settings
from ..sinks.preview import PreviewOutput
from ..sinks.sink import Sink
from ..sources.documents import TomoRunRouter
from .run_journal import RunJournal
from .scan_sinks import SinkFactory

log = logging.getLogger(__name__)

class StreamWorker:
    """Router + per-run sinks + preview outputs + journal: everything a worker process runs.

    ``worker(name, doc)`` is the document entry point (what RemoteDispatcher calls);
    :meth:`serve_zmq` and :meth:`serve_pva` run the two kinds of feed until ``max_runs`` scans
    ended, ``timeout_s`` passed, or :meth:`stop` was called from another thread.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: Any | None = None,
        journal_dir: str | Path | None = None,
        preview_outputs: Sequence[PreviewOutput] = (),
        full_volume: bool | None = None,
        max_queue_bytes: int | None = None,
        router_kwargs: Mapping[str, Any] | None = None,
        stop_timeout_s: float = 300.0,
    ):
        self.settings = settings or load_settings()
        self.client = client if client is not None else self._connect_tiled()
        self.processed = None
        if self.client is not None:
            from ..results.tiled_results import processed_container

            self.processed = processed_container(self.client, self.settings.tiled.processed_container)
        #: each run's sinks, wired as in the in-process pipeline (the Tiled server is remote:
        #: volumes are uploaded unless tiled.register_in_place says the server reads this disk)
        self.sinks = SinkFactory(self.settings, processed=self.processed, preview_outputs=preview_outputs,
                                 full_volume=full_volume, max_queue_bytes=max_queue_bytes,
                                 extra=[lambda: _RunWatch(self)])
        self.service = self.sinks.service
        self.previews = self.sinks.previews
        self.centers = self.sinks.centers
        self.router = TomoRunRouter(self.make_sinks, **self._router_kwargs(router_kwargs))
        journal_dir = journal_dir or self.settings.preview.journal_dir
        self.journal = RunJournal(journal_dir) if journal_dir else None
        self.ended: list[str] = []
        #: runs whose sinks saw their stop; runs whose journal waits for their full volume
        self._closed_runs: set[str] = set()
        self._volume_pending: set[str] = set()
        self.service.listeners.append(self._volume_outcome)
        self.rebuilt: list[str] = []
        self.gaps_filled = 0
        #: stream_resource uid -> (indices stop, seq_nums stop, descriptor) of its last StreamDatum
        self._datum_end: dict[str, tuple[int, int, str] | None] = {}
        self._max_runs: int | None = None
        self._stop_event = threading.Event()
        self._on_stop: Callable[[], None] | None = None
        #: a run with no new frame for this long, whose stop Tiled does not have, is given up
        self.stop_timeout_s = stop_timeout_s
        #: run uid -> monotonic time of its last frame (or its start), for open runs
        self.last_activity: dict[str, float] = {}
        #: (run uid, why) of the runs given up
        self.gave_up: list[tuple[str, str]] = []
        #: the signal that interrupted the worker, if one did
        self.interrupted: int | None = None

    # -- construction helpers ------------------------------------------------------------
    def _connect_tiled(self) -> Any | None:
        uri = self.settings.tiled.uri
        if not uri:
            log.warning("no tiled.uri configured: previews and volumes are not written to Tiled")
            return None
        from tiled.client import from_uri

        return from_uri(uri, api_key=self.settings.tiled.api_key)

    def _router_kwargs(self, extra: Mapping[str, Any] | None) -> dict[str, Any]:
        kwargs = dict(extra or {})
        if "dark_flat_resolver" not in kwargs and self.client is not None:
            try:  # dark/flat runs recorded separately (HEX layout) are found in the raw catalog
                from ..sources import documents

                resolver = getattr(documents, "tiled_dark_flat_resolver", None)
                if resolver is not None:
                    raw = self.settings.tiled.raw_container
                    if raw in self.client:
                        kwargs["dark_flat_resolver"] = resolver(self.client[raw])
            except Exception as exc:
                log.warning("no dark/flat resolver from Tiled: %s", exc)
        return kwargs

    def make_sinks(self) -> Sink:
        """The sinks of one run (called by the router at each tomography start)."""
        return self.sinks()

    # -- documents ------------------------------------------------------------------------
    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self._handle(name, doc, record=True)

    def _handle(self, name: str, doc: dict[str, Any], *, record: bool) -> None:
        if name == "stream_resource":
            self._datum_end.setdefault(doc["uid"], None)
        elif name == "stream_datum":
            for gap in self._gaps(doc):
                self._route("stream_datum", gap, record)
        self._route(name, doc, record)

    def _route(self, name: str, doc: dict[str, Any], record: bool) -> None:
        journal = self.journal
        if journal is not None and record and name != "start":
            journal.record(name, doc)
        elif journal is not None:
            journal.run_of(name, doc)  # learn descriptor/resource owners while replaying
        self.router(name, doc)
        if journal is not None:
            if name == "start" and doc.get("uid") in self.router.runs:
                journal.open(doc["uid"])
                if record:
                    journal.record(name, doc)
            elif name == "stop":
                self._close_journal(doc)

    def _close_journal(self, stop: Mapping[str, Any]) -> None:
        """At a run's stop: its journal is kept until its full volume is made or has failed
        (:meth:`_volume_outcome`), so a worker killed while computing it rebuilds the run and
        makes the volume again; without a volume to wait for it is deleted now."""
        uid = str(stop.get("run_start", ""))
        waits = (self.sinks.full_volume and uid in self._closed_runs
                 and stop.get("exit_status", "success") == "success")
        self._closed_runs.discard(uid)
        if waits:
            self._volume_pending.add(uid)
        self.journal.close(uid, delete=not waits)

    def _volume_outcome(self, outcome: Any) -> None:
        """The volume of a run is made or failed (with its reason and retry): its journal goes."""
        if outcome.run_uid in self._volume_pending:
            self._volume_pending.discard(outcome.run_uid)
            if self.journal is not None:
                self.journal.discard(outcome.run_uid)

    def _gaps(self, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
        """StreamDatum ranges that never reached this worker (it was down, or 0MQ dropped them):
        a synthetic StreamDatum for the gap lets the router read those frames from the file.
        Their angles come from the plan (the router warns), since their events are lost too."""
        key = doc.get("stream_resource")
        if key not in self._datum_end:
            return []
        i0, i1 = int(doc["indices"]["start"]), int(doc["indices"]["stop"])
        seq = doc.get("seq_nums")
        s0 = int(seq["start"]) if seq else 0
        last = self._datum_end[key] or (0, s0 - i0 if seq else 0, doc["descriptor"])
        self._datum_end[key] = (max(i1, last[0]), int(seq["stop"]) if seq else 0, doc["descriptor"])
        if i0 <= last[0]:
            return []
        if last[2] != doc["descriptor"]:  # the gap may span two streams: not guessable
            log.error("frames [%d, %d) of stream_resource %s never arrived and span a change of "
                      "stream; they are not previewed (they are in the file)", last[0], i0, key)
            return []
        gap: dict[str, Any] = {"uid": f"{doc['uid']}-gap-{last[0]}", "stream_resource": key,
                               "descriptor": doc["descriptor"],
                               "indices": {"start": last[0], "stop": i0}}
        if seq and last[1] >= 1 and s0 - last[1] == i0 - last[0]:
            gap["seq_nums"] = {"start": last[1], "stop": s0}
        log.warning("frames [%d, %d) of stream_resource %s never arrived as documents; "
                    "reading them from the file", last[0], i0, key)
        self.gaps_filled += 1
        return [gap]

    def replay_journal(self) -> list[str]:
        """Rebuild the runs a previous worker left open (frames come back from their files)."""
        if self.journal is None:
            return []
        rebuilt = []
        for path in self.journal.pending():
            docs = RunJournal.read(path)
            if not docs or docs[0][0] != "start":
                log.warning("journal %s has no start document; removed", path)
                path.unlink(missing_ok=True)
                continue
            uid = docs[0][1]["uid"]
            log.info("rebuilding run %s from its journal (%d documents)", uid, len(docs))
            for name, doc in docs:
                if self._stop_event.is_set():  # SIGINT/SIGTERM while rebuilding: stop now
                    self.rebuilt.extend(rebuilt)
                    return rebuilt
                self._handle(name, doc, record=False)
            rebuilt.append(uid)
        self.rebuilt.extend(rebuilt)
        for uid in rebuilt:  # the stop may have been sent while this worker was down
            self._stop_from_tiled(uid)
        return rebuilt

    # -- runs whose stop does not come ----------------------------------------------------------
    def _stop_from_tiled(self, run_uid: str) -> bool:
        """Route the run's stop document from the raw catalog, if Tiled has it; True if so."""
        if run_uid not in self.router.runs or self.client is None:
            return False
        try:
            stop = self.client[self.settings.tiled.raw_container][run_uid].metadata.get("stop")
        except Exception as exc:  # Tiled down, or the run is not there (yet)
            log.info("run %s: no stop document from Tiled (%s)", run_uid, exc)
            return False
        if not stop:
            return False
        log.warning("run %s: its stop document was missed; taken from Tiled", run_uid)
        self._handle("stop", dict(stop), record=False)
        return True

    def expire_stale_runs(self, *, now: float | None = None, all_open: bool = False) -> list[str]:
        """Give up the open runs with no frame for ``stop_timeout_s`` (or every open run with
        ``all_open``) whose stop Tiled does not have either; returns their uids."""
        now = time.monotonic() if now is None else now
        given_up = []
        for uid in list(self.router.runs):
            idle = now - self.last_activity.get(uid, now)
            if not all_open and idle < self.stop_timeout_s:
                continue
            if self._stop_from_tiled(uid):
                continue
            why = (f"gave up: no stop document after {idle:.0f} s without frames (stop timeout "
                   f"{self.stop_timeout_s:.0f} s)" if not all_open else
                   "gave up: the worker is exiting before the run's stop document arrived")
            why += ("; the raw data is untouched: reconstruct it later with "
                    f"'bluesky-tomo-hpc reprocess URI --uid {uid}'")
            self.router.report(uid, why)
            self.gave_up.append((uid, why))
            self._handle("stop", {"uid": f"{uid}-given-up", "run_start": uid, "time": time.time(),
                                  "exit_status": "fail", "reason": why, "num_events": {}},
                         record=False)
            given_up.append(uid)
        return given_up

    def interrupt(self, signum: int) -> None:
        """What SIGINT/SIGTERM do: stop serving at once (thread- and signal-safe)."""
        self.interrupted = signum
        self.stop()

    # -- feeds ----------------------------------------------------------------------------
    def _run_ended(self, end: ScanEnd) -> None:
        self.ended.append(end.run_uid)
        if self._max_runs is not None and len(self.ended) >= self._max_runs:
            self.stop()

    def stop(self) -> None:
        """Ask a running ``serve_*`` to return (thread-safe)."""
        self._stop_event.set()
        if self._on_stop is not None:
            self._on_stop()

    def serve_zmq(self, address: str, *, prefix: bytes = b"", max_runs: int | None = None,
                  timeout_s: float | None = None, ready: Callable[[], None] | None = None) -> int:
        """Subscribe to a bluesky-0MQ-proxy's out address; returns the number of scans ended."""
        from ..settings import check_zmq_address
        from ..sources.zmq_documents import document_dispatcher

        check_zmq_address(address, what="--zmq address")

        self._stop_event.clear()
        self.replay_journal()
        # msgpack, never bluesky's pickle default: see zmq_documents
        dispatcher = document_dispatcher(address, prefix=prefix, loop=asyncio.new_event_loop())
        dispatcher.subscribe(self)
        self._max_runs = None if max_runs is None else len(self.ended) + max_runs

        def cancel() -> None:
            if dispatcher._task is not None:
                dispatcher._task.cancel()

        def cancel_threadsafe() -> None:
            if _in_loop(dispatcher.loop):
                cancel()
            elif not dispatcher.loop.is_closed():
                dispatcher.loop.call_soon_threadsafe(cancel)

        self._on_stop = cancel_threadsafe
        if self._stop_event.is_set() and self.interrupted is not None:
            return 0  # interrupted while rebuilding the journal
        if timeout_s is not None:
            dispatcher.loop.call_later(timeout_s, cancel)

        def check_stale() -> None:
            try:
                self.expire_stale_runs()
            except Exception:
                log.exception("checking for runs without a stop failed")
            dispatcher.loop.call_later(min(5.0, self.stop_timeout_s / 4), check_stale)

        dispatcher.loop.call_later(min(5.0, self.stop_timeout_s / 4), check_stale)
        if ready is not None:
            dispatcher.loop.call_soon(ready)
        n0 = len(self.ended)
        try:
            dispatcher.start()
        except asyncio.CancelledError:
            pass
        finally:
            self._on_stop = None
        return len(self.ended) - n0

    def serve_pva(self, channel: str, *, max_runs: int | None = None, timeout_s: float | None = None,
                  ready: Callable[[], None] | None = None, **source_kwargs: Any) -> int:
        """Monitor an NTNDArray channel; returns the number of scans ended."""
        from ..sources.pva import PvaSource

        source = PvaSource(_PerScanSinks(self.make_sinks), channel, **source_kwargs)
        self._max_runs = None if max_runs is None else len(self.ended) + max_runs
        self._stop_event.clear()
        self._on_stop = None
        n0 = len(self.ended)
        source.start()
        if ready is not None:
            ready()
        try:
            self._stop_event.wait(timeout_s)
        finally:
            source.stop()
        return len(self.ended) - n0

    # -- end ------------------------------------------------------------------------------
    def wait(self, timeout: float | None = 60.0) -> bool:
        """Until every preview is final and every full volume is done; False on timeout.
        Waits in short slices, so a signal handler (SIGINT/SIGTERM) gets to run."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float:
            return 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))

        for sink in list(self.previews):
            while True:
                try:
                    sink.wait_final(left())
                    break
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        return False
                except Exception:
                    break  # that preview failed; it was logged
        while not self.service.wait(left()):
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def close(self) -> None:
        self.sinks.close()
        if self.journal is not None:
            self.journal.close_all()


class _PerScanSinks:
    """Fresh sinks for each PVA scan, as the router makes for each document run."""

    def __init__(self, factory: Callable[[], Sink]):
        self.factory = factory
        self._current: Sink | None = None

    def open(self, spec: Any) -> None:
        self._current = self.factory()
        self._current.open(spec)

    def add(self, batch: Any) -> None:
        if self._current is not None:
            self._current.add(batch)

    def close(self, end: ScanEnd) -> None:
        current, self._current = self._current, None
        if current is not None:
            current.close(end)


class _RunWatch:
    """The last sink of each run: when it last saw frames (for the stop timeout), and that it
    ended (for ``max_runs``)."""

    def __init__(self, worker: StreamWorker):
        self.worker = worker
        self.run_uid = ""

    def open(self, spec: Any) -> None:
        self.run_uid = spec.run_uid
        self.worker.last_activity[spec.run_uid] = time.monotonic()

    def add(self, batch: Any) -> None:
        self.worker.last_activity[self.run_uid] = time.monotonic()

    def close(self, end: ScanEnd) -> None:
        self.worker.last_activity.pop(end.run_uid, None)
        self.worker._closed_runs.add(end.run_uid)
        self.worker._run_ended(end)


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False

