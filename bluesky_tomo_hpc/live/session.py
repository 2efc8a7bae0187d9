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

from ..metadata.pinned_center import PinnedCenters
from ..model import UnsafeNameError, path_inside
from ..results.recovery import TiledRecovery
from ..results.series_volume import SeriesCollector
from ..results.spool import ResultSpool
from ..results.tiled_results import processed_container
from ..results.tiled_server import EmbeddedTiledServer, raw_catalog
from ..results.writer import TiledResultWriter
from ..settings import Settings, load_settings
from ..sinks.full_volume import FullVolumeSink, ReconService
from ..sinks.sink import Sink, SinkFanout
from ..sources.threaded import ThreadedCallback

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
        self.service = ReconService()
        self.spool = ResultSpool(self.data_dir / "spool")
        self.result_writer = TiledResultWriter(self.processed, png_dir=self.data_dir / "previews",
                                               spool=self.spool, report=self.report_error)
        self.service.listeners.append(self._report_failed_outcome)
        self.monitor = None
        self._submit_sinks: list[Any] = []
        self._preview_publisher: Any = None
        self._preview_sinks: list[Any] = []
        #: run uid -> its last final live preview (PreviewUpdate)
        self.previews: dict[str, Any] = {}
        #: (detector key, frame shape) -> the centre of its last confident reconstruction
        self.centers: dict[tuple[str, tuple[int, ...]], float] = {}
        self.service.listeners.append(self._remember_center)
        #: centres fixed by a scan's metadata or its series (see metadata.pinned_center)
        self.pinned = PinnedCenters()
        self.service.listeners.append(self.pinned.remember)
        #: called with each run's settled final live preview (steering waits on these)
        self.preview_listeners: list[Callable[[Any], None]] = []
        in_place = settings.tiled.register_in_place
        #: time series grouped into a Tiled container and an OME-Zarr with a t axis
        self.series = SeriesCollector(
            lambda: processed_container(client, settings.tiled.series_container), self.data_dir / "series",
            register_in_place=server is not None if in_place is None else in_place)
        self.service.listeners.append(self.series)
        #: SciCat datasets (raw per scan, derived per reconstruction), when settings.scicat.uri is set
        self.scicat = None
        if settings.scicat.uri:
            from ..jobs.scicat import ScicatPublisher
            from ..jobs.scicat_outbox import ScicatOutbox

            journal = self.monitor.journal if self.monitor is not None else settings.journal_path
            self.scicat = ScicatPublisher(settings.scicat, ScicatOutbox(journal))
            self.service.listeners.append(self.scicat.queue_derived)
        if settings.jobs.executor != "none":
            from ..jobs.factory import make_monitor

            # the embedded server reads the data folder, so batch volumes are registered in place
            roots = [self.data_dir] if server is not None else None
            self.monitor = make_monitor(settings, tiled=self.processed, readable_roots=roots)
        self.progress = progress
        self._extra_sinks = list(extra_sinks or [])
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
        sinks: list[Sink] = []
        if self.settings.preview.enabled:
            sinks.append(self.make_preview())
        if self.settings.full_volume:
            sinks.append(FullVolumeSink(self.settings.recon, self.service, self.result_writer,
                                        progress=self.progress, center_for=self.pinned.center_for,
                                        fallback_center=self._previous_center))
        if self.monitor is not None:
            from ..jobs.factory import make_submit_sink

            submit = make_submit_sink(self.settings, self.monitor)
            submit.report = self.report_error
            self._submit_sinks.append(submit)
            sinks.append(submit)
        if self.scicat is not None:
            from ..jobs.scicat import ScicatRawSink

            raw_uri = getattr(self.raw, "uri", "")
            sinks.append(ScicatRawSink(self.scicat, lambda uid: f"{raw_uri}/{uid}"))
        sinks.extend(factory() for factory in self._extra_sinks)
        return SinkFanout(sinks)

    def make_preview(self) -> Sink:
        """A live three-slice preview: TIFFs + final PNG in ``data_dir/previews``, the final in
        Tiled (kind ``preview``), and 0MQ PUB when ``preview.zmq_address`` is set."""
        from ..sinks.preview import PreviewFileWriter, PreviewSink, PreviewTiledWriter

        pv, recon = self.settings.preview, self.settings.recon
        outputs: list[Any] = []
        if pv.zmq_address:
            if self._preview_publisher is None:
                from ..sinks.preview_stream import PreviewPublisher

                self._preview_publisher = PreviewPublisher(pv.zmq_address)
            outputs.append(self._preview_publisher)
        outputs.append(PreviewFileWriter(pv.png_dir or self.data_dir / "previews"))
        outputs.append(PreviewTiledWriter(self.processed, recon))
        outputs.append(self._keep_preview)
        center = recon.center if isinstance(recon.center, float | int) else None
        sink = PreviewSink(outputs, binning=pv.binning, positions=pv.positions, center=center,
                           fallback_center=self._previous_center,
                           filter_name=recon.filter_name, device=recon.device,
                           max_queue_bytes=int(pv.max_queue_mb * 2**20),
                           publish_interval_s=pv.publish_interval_s, final_budget_s=pv.final_budget_s,
                           refine_center=pv.refine_center)
        self._preview_sinks.append(sink)
        del self._preview_sinks[:-16]  # the last few; older ones are long final
        return sink

    def _keep_preview(self, update: Any) -> None:
        if update.final:
            self.previews[update.run_uid] = update
        if update.final and not update.metadata.get("refinement_pending"):
            for listener in list(self.preview_listeners):
                try:
                    listener(update)
                except Exception:
                    log.exception("preview listener failed for run %s", update.run_uid)

    def _previous_center(self, spec: Any) -> float | None:
        """The centre the last reconstruction of this detector found: the next live preview
        starts from it (the axis rarely moves between scans); a centre pinned by the scan's
        metadata or series comes first."""
        pinned = self.pinned.pinned(spec.metadata)
        if pinned is not None:
            return pinned
        return self.centers.get((spec.detector_key, tuple(spec.frame_shape)))

    def _remember_center(self, outcome: Any) -> None:
        from ..engine.center import CONFIDENCE_THRESHOLD

        result = getattr(outcome, "result", None)
        spec = getattr(outcome, "spec", None)
        if (outcome.ok and result is not None and spec is not None
                and outcome.center_confidence >= CONFIDENCE_THRESHOLD):
            self.centers[(spec.detector_key, tuple(spec.frame_shape))] = float(outcome.center)

    def report_error(self, run_uid: str, message: str) -> None:
        """Add to a run's error list (what the scan summary shows) from any thread."""
        self.router.report(run_uid, message)

    def _report_failed_outcome(self, outcome: Any) -> None:
        if not outcome.ok:
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
        for sink in list(self._preview_sinks):  # runs that have stopped: their final preview
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
        if self._preview_publisher is not None:
            self._preview_publisher.close()
        if self.scicat is not None:
            self.scicat.close()
        self.service.shutdown()
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
