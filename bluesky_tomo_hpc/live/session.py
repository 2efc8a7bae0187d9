"""Wiring: what a beamline subscribes to its RunEngine, built from one :class:`Settings`.

``configure(RE)`` is the whole beamline integration::

    import bluesky_tomo_hpc
    tomo = bluesky_tomo_hpc.configure(RE)          # settings from $BLUESKY_TOMO_HPC_CONFIG

It subscribes two callbacks, each on its own thread so the RunEngine never waits:
bluesky-tiled-plugins' ``TiledWriter`` (raw runs into the ``raw`` catalog, with a JSONL backup
if Tiled fails) and the tomography callback (live preview, full
volume at stop, batch job on HPC), which never blocks or raises into the RunEngine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..results.series_volume import SeriesCollector
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
        if settings.jobs.executor != "none":
            from ..jobs.factory import make_monitor

            # the embedded server reads the data folder, so batch volumes are registered in place
            roots = [self.data_dir] if server is not None else None
            self.monitor = make_monitor(settings, tiled=self.processed, readable_roots=roots)
        #: SciCat datasets (raw per scan, derived per reconstruction), when settings.scicat.uri is set
        self.scicat = None
        if settings.scicat.uri:
            from ..jobs.scicat import ScicatPublisher
            from ..jobs.scicat_outbox import ScicatOutbox

            journal = self.monitor.journal if self.monitor is not None else settings.journal_path
            self.scicat = ScicatPublisher(settings.scicat, ScicatOutbox(journal))
        in_place = settings.tiled.register_in_place
        in_place = (server is not None) if in_place is None else in_place
        #: the sinks of each run (preview, full volume, batch job, SciCat), wired once
        self.sinks = SinkFactory(
            settings.model_copy(update={"data_dir": self.data_dir}), processed=self.processed,
            register_in_place=in_place, preview_outputs=[self._keep_preview], progress=progress,
            extra=[self._submit_sink] * (self.monitor is not None)
            + [self._scicat_raw_sink] * (self.scicat is not None) + list(extra_sinks or []))
        self.service = self.sinks.service
        self.result_writer = self.sinks.result_writer
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
        self.tiled_writer = ThreadedCallback(writer, name="tiled-writer")
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

    def _scicat_raw_sink(self) -> Sink:
        from ..jobs.scicat import ScicatRawSink

        raw_uri = getattr(self.raw, "uri", "")
        return ScicatRawSink(self.scicat, lambda uid: f"{raw_uri}/{uid}")

    @property
    def centers(self) -> DetectorCenters:
        """The centre each detector's next scan starts from."""
        return self.sinks.centers

    def batch_jobs(self, run_uid: str | None = None) -> list[Any]:
        """Journal records of the batch jobs this pipeline submitted (for one run, or all)."""
        if self.monitor is None:
            return []
        ids = [j for sink in self._submit_sinks for j in sink.job_ids]
        records = [self.monitor.journal.get(j) for j in dict.fromkeys(ids)]
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
        if self.monitor is not None:
            self.monitor.stop()
        self.sinks.close()
        if self.scicat is not None:
            self.scicat.close()
        if self.server is not None:
            self.server.close()


def configure(RE: Any, settings: Settings | str | Path | None = None, **kwargs: Any) -> TomoPipeline:
    """Build a pipeline from settings (an object, a YAML path, or the environment) and subscribe it."""
    if not isinstance(settings, Settings):
        settings = load_settings(settings)
    pipeline = TomoPipeline.from_settings(settings, **kwargs)
    pipeline.subscribe(RE)
    return pipeline
