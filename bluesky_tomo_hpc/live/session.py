"""Wiring: what a beamline subscribes to its RunEngine, built from one :class:`Settings`.

``configure(RE)`` is the whole beamline integration::

    import bluesky_tomo_hpc
    tomo = bluesky_tomo_hpc.configure(RE)          # settings from $BLUESKY_TOMO_HPC_CONFIG

It subscribes two callbacks, each on its own thread so the RunEngine never waits:
bluesky-tiled-plugins' ``TiledWriter`` (raw runs into the ``raw`` catalog, with a JSONL backup
if Tiled fails) and the tomography callback (live preview, full
volume at stop, batch job on HPC), which never blocks or raises into the RunEngine.

When Tiled is down, nothing is lost: a raw run goes to the JSONL backup, a full volume to the
spool (``<data_dir>/spool``), each failure to the run's error list (``tomo.router.errors``), and
a recovery thread puts both into Tiled once it answers again (``bluesky-tomo-hpc recover`` does
the same by hand).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..model import UnsafeNameError, path_inside
from ..results.recovery import TiledRecovery
from ..results.series_volume import SeriesCollector
from ..results.spool import ResultSpool
from ..results.tiled_results import processed_container
from ..results.tiled_server import EmbeddedTiledServer, raw_catalog
from ..settings import Settings, load_settings
from ..sinks.sink import Sink
from ..sources.threaded import ThreadedCallback
from .scan_sinks import DetectorCenters, SinkFactory

log = logging.getLogger(__name__)


class TomoPipeline:
    """Raw-data writer + tomography callback + reconstruction service for one beamline."""

    def __init__(
        self,
        settings: Settings,
        client: Any,
        *,
        server: EmbeddedTiledServer | None = None,
        extra_sinks: list[Callable[[], Sink]] | None = None,
        progress: Callable[[int, int], None] | None = None,
        recovery_interval_s: float = 30.0,
    ):
        from bluesky_tiled_plugins import TiledWriter

        from ..sources.callback import TomoCallback
        from ..sources.documents import tiled_dark_flat_resolver

        self.settings = settings
        self.client = client
        self.server = server
        self.data_dir = Path(settings.data_dir).resolve()
        self.raw = raw_catalog(client, settings.tiled.raw_container)
        self.processed = processed_container(client, settings.tiled.processed_container)
        self.monitor = None
        self._submit_sinks: list[Any] = []
        #: run uid -> its last final live preview (PreviewUpdate)
        self.previews: dict[str, Any] = {}
        #: called with each run's settled final live preview (steering waits on these)
        self.preview_listeners: list[Callable[[Any], None]] = []
        #: called with each run's scan health as it changes (sinks.scan_health_sink.HealthUpdate;
        #: steering's ResultFutures and ScanHealthSignals listen)
        self.health_listeners: list[Callable[[Any], None]] = []
        if settings.jobs.executor != "none":
            from ..jobs.factory import make_monitor

            # the embedded server reads the data folder, so batch volumes are registered in place
            roots = [self.data_dir] if server is not None else None
            self.monitor = make_monitor(settings, tiled=self.processed, readable_roots=roots)
        #: SciCat datasets (raw per scan, derived per reconstruction), when settings.scicat.uri is set
        self.scicat = None
        if settings.scicat.uri:
            from ..publishing.scicat import ScicatPublisher
            from ..publishing.scicat_outbox import ScicatOutbox

            journal = self.monitor.journal if self.monitor is not None else settings.journal_path
            self.scicat = ScicatPublisher(settings.scicat, ScicatOutbox(journal))
        in_place = settings.tiled.register_in_place
        in_place = (server is not None) if in_place is None else in_place
        #: the sinks of each run (preview, full volume, batch job, SciCat), wired once
        self.sinks = SinkFactory(
            settings.model_copy(update={"data_dir": self.data_dir}), processed=self.processed,
            register_in_place=in_place, preview_outputs=[self._keep_preview], progress=progress,
            health_outputs=[self._tell_health],
            extra=[self._submit_sink] * (self.monitor is not None)
            + [self._scicat_raw_sink] * (self.scicat is not None) + list(extra_sinks or []))
        self.service = self.sinks.service
        self.result_writer = self.sinks.result_writer
        #: full volumes Tiled did not take wait here; failures go to the run's error list
        self.spool = ResultSpool(self.data_dir / "spool")
        if self.result_writer is not None:
            self.result_writer.spool, self.result_writer.report = self.spool, self.report_error
        if self.sinks.preview_tiled is not None:  # the final preview, too, is kept when Tiled is down
            self.sinks.preview_tiled.spool, self.sinks.preview_tiled.report = self.spool, self.report_error
        self.service.listeners.append(self._report_failed_outcome)
        #: centres fixed by a scan's metadata or its series (see metadata.pinned_center)
        self.pinned = self.sinks.pinned
        #: time series grouped into a Tiled container and an OME-Zarr with a t axis
        self.series = SeriesCollector(
            lambda: processed_container(client, settings.tiled.series_container), self.data_dir / "series",
            register_in_place=in_place)
        self.service.listeners.append(self.series)
        if self.scicat is not None:
            self.service.listeners.append(self.scicat.queue_derived)
        backup = self.data_dir / "tiled_backup"
        backup.mkdir(parents=True, exist_ok=True)
        #: raw runs into Tiled, on its own thread (HTTP round trips per document)
        writer = TiledWriter(self.raw, batch_size=settings.tiled.writer_batch_size,
                             backup_directory=str(backup))
        self.tiled_writer = ThreadedCallback(_BackupWatch(writer, backup, self.report_error),
                                             name="tiled-writer")
        #: puts into Tiled what it missed while down (backed-up raw runs, spooled results)
        self.recovery = TiledRecovery(self.spool, backup, raw=self.raw, processed=self.processed,
                                      interval_s=recovery_interval_s).start()
        self.callback = TomoCallback(self.make_sinks, dark_flat_resolver=tiled_dark_flat_resolver(self.raw))
        self.router = self.callback.router
        self._tokens: list[tuple[Any, int]] = []

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> TomoPipeline:
        """Connect to ``settings.tiled.uri``, or start the embedded server over the data folder."""
        settings = settings or load_settings()
        data_dir = Path(settings.data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        if settings.tiled.uri:
            from tiled.client import from_uri

            return cls(settings, from_uri(settings.tiled.uri, api_key=settings.tiled.api_key), **kwargs)
        server = EmbeddedTiledServer(data_dir / "tiled", api_key=settings.tiled.api_key,
                                     readable_storage=[data_dir])
        return cls(settings, server.client(), server=server, **kwargs)

    def make_sinks(self) -> Sink:
        """The sinks of one tomography run, as the settings ask."""
        return self.sinks()

    def _submit_sink(self) -> Sink:
        from ..jobs.factory import make_submit_sink

        submit = make_submit_sink(self.settings, self.monitor)
        submit.report = self.report_error
        self._submit_sinks.append(submit)
        return submit

    def _keep_preview(self, update: Any) -> None:
        if update.final:
            self.previews[update.run_uid] = update
        if update.final and not update.metadata.get("refinement_pending"):
            for listener in list(self.preview_listeners):
                try:
                    listener(update)
                except Exception:
                    log.exception("preview listener failed for run %s", update.run_uid)

    def _tell_health(self, update: Any) -> None:
        for listener in list(self.health_listeners):
            try:
                listener(update)
            except Exception:
                log.exception("health listener failed for run %s", update.run_uid)

    def _scicat_raw_sink(self) -> Sink:
        from ..publishing.scicat import ScicatRawSink

        raw_uri = getattr(self.raw, "uri", "")
        return ScicatRawSink(self.scicat, lambda uid: f"{raw_uri}/{uid}")

    @property
    def centers(self) -> DetectorCenters:
        """The centre each detector's next scan starts from."""
        return self.sinks.centers

    def report_error(self, run_uid: str, message: str) -> None:
        """Add to a run's error list (what the scan summary shows) from any thread."""
        self.router.report(run_uid, message)

    def _report_failed_outcome(self, outcome: Any) -> None:
        if not outcome.ok and not outcome.made_elsewhere:
            self.report_error(outcome.run_uid, f"full reconstruction failed: {outcome.message}")

    def batch_jobs(self, run_uid: str | None = None) -> list[Any]:
        """Journal records of the batch jobs this pipeline submitted (for one run, or all)."""
        if self.monitor is None:
            return []
        from ..jobs.journal import JournalError

        ids = [j for sink in self._submit_sinks for j in sink.job_ids]
        records = []
        for j in dict.fromkeys(ids):
            try:
                records.append(self.monitor.journal.get(j))
            except JournalError:  # parked while the journal was locked: not recorded yet
                continue
        return [r for r in records if run_uid is None or r.run_uid == run_uid]

    def wait_for_jobs(self, timeout: float = 600.0) -> list[Any]:
        """Until every batch job submitted so far is finished (or failed); their records."""
        for sink in list(self._submit_sinks):
            sink.wait(timeout)
        if self.monitor is None:
            return []
        return [self.monitor.wait(r.job_id, timeout) for r in self.batch_jobs()]

    # -- RunEngine ------------------------------------------------------------------------
    def subscribe(self, RE: Any) -> list[int]:
        """Subscribe the raw-data writer and the tomography callback; returns the tokens."""
        tokens = [RE.subscribe(self.tiled_writer), RE.subscribe(self.callback)]
        self._tokens.extend((RE, t) for t in tokens)
        return tokens

    def unsubscribe(self) -> None:
        for RE, token in self._tokens:
            RE.unsubscribe(token)
        self._tokens.clear()

    def wait(self, timeout: float | None = 300.0) -> bool:
        """Until every queued document is handled and every reconstruction finished."""
        flushed = self.callback.flush(timeout) and self.tiled_writer.flush(timeout)
        for sink in list(self.sinks.previews):  # runs that have stopped: their final preview
            if sink.stopped:
                try:
                    sink.wait_final(timeout)
                except Exception as exc:  # reported by the sink itself; waiting is done
                    log.debug("preview of a run ended without a final: %s", exc)
        return bool(flushed) and self.service.wait(timeout)

    def close(self) -> None:
        self.unsubscribe()
        self.callback.close()
        self.tiled_writer.close()
        self.recovery.stop()
        if self.monitor is not None:
            self.monitor.stop()
        self.sinks.close()
        if self.scicat is not None:
            self.scicat.close()
        if self.server is not None:
            self.server.close()


class _BackupWatch:
    """The raw-data writer, telling the run's error list when a run went to the JSONL backup
    instead of Tiled (TiledWriter itself only logs it)."""

    def __init__(self, writer: Callable[[str, dict], Any], backup: Path,
                 report: Callable[[str, str], None]):
        self.writer, self.backup, self.report = writer, backup, report

    def __call__(self, name: str, doc: dict) -> None:
        self.writer(name, doc)
        if name == "stop":
            uid = str(doc.get("run_start", ""))
            try:  # TiledWriter names the backup after the uid's first part; never a path outside
                path = path_inside(self.backup, f"{uid.split('-')[0]}.jsonl", what="run uid")
            except UnsafeNameError:
                return
            if uid and path.exists():
                self.report(uid, f"raw run not fully written to Tiled; all its documents are in {path} "
                            "and go to Tiled when it is back (or run: bluesky-tomo-hpc recover)")


def configure(RE: Any, settings: Settings | str | Path | None = None, **kwargs: Any) -> TomoPipeline:
    """Build a pipeline from settings (an object, a YAML path, or the environment) and subscribe it."""
    if not isinstance(settings, Settings):
        settings = load_settings(settings)
    pipeline = TomoPipeline.from_settings(settings, **kwargs)
    pipeline.subscribe(RE)
    return pipeline
