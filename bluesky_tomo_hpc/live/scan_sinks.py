"""The sinks of one scan, built from :class:`Settings`: the one place they are wired.

The in-process pipeline (``configure(RE)``), the streaming worker and catalog re-processing all
ask a :class:`SinkFactory` for each run's sinks, so a live preview, a full volume and the centre
a detector remembers between scans behave the same whichever process runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..batch.volume_at_stop import VolumeAtStop
from ..engine.memory import budget_bytes
from ..metadata.pinned_center import PinnedCenters
from ..settings import Settings
from ..sinks.full_volume import FullVolumeSink, ReconOutcome, ReconService
from ..sinks.scan_health_sink import ScanHealthSink
from ..sinks.sink import Sink, SinkFanout


class DetectorCenters:
    """(detector, frame shape) -> the last centre trusted for it: the next scan's preview starts
    there (the axis rarely moves between scans).

    One rule for every process: a scan's checked preview centre is remembered at its final, and
    a confident full-volume centre, when one is made, replaces it (it comes later and looks at
    more rows)."""

    def __init__(self) -> None:
        self._centers: dict[tuple[str, tuple[int, ...]], float] = {}

    def previous(self, spec: Any) -> float | None:
        return self._centers.get((str(spec.detector_key), tuple(spec.frame_shape)))

    def from_preview(self, update: Any) -> None:
        """A final live preview whose centre check ran."""
        check = update.metadata.get("center_check") or {}
        if update.final and check.get("done"):
            key = (str(update.metadata.get("detector")), tuple(update.metadata.get("frame_shape", ())))
            self._centers[key] = float(check["center"])

    def from_outcome(self, outcome: ReconOutcome) -> None:
        """A finished full volume."""
        spec = outcome.spec
        from ..engine.center import CONFIDENCE_THRESHOLD

        if outcome.ok and spec is not None and (outcome.center_confidence or 0.0) >= CONFIDENCE_THRESHOLD:
            self._centers[(str(spec.detector_key), tuple(spec.frame_shape))] = float(outcome.center)

    def __len__(self) -> int:
        return len(self._centers)

    def items(self) -> Iterable[tuple[tuple[str, tuple[int, ...]], float]]:
        return self._centers.items()


class SinkFactory:
    """Builds each run's sinks (``factory()`` is what a router calls at every tomography start).

    ``processed``: the Tiled container for results (None: files only). ``register_in_place``:
    the Tiled server reads the data folder (the embedded one), so volumes are registered where
    they are written instead of uploaded. ``preview_outputs`` are added to every live preview;
    ``extra`` makes further per-run sinks (a batch-job submitter).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        processed: Any | None = None,
        register_in_place: bool | None = None,
        preview_outputs: Iterable[Any] = (),
        full_volume: bool | None = None,
        max_queue_bytes: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        extra: Iterable[Callable[[], Sink]] = (),
        health_outputs: Iterable[Any] = (),
    ):
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.processed = processed
        self.full_volume = settings.full_volume if full_volume is None else full_volume
        self.budget = budget_bytes(settings.memory_budget_mb)
        pv = settings.preview
        self.max_queue_bytes = int(pv.max_queue_mb * 2**20) if max_queue_bytes is None else max_queue_bytes
        self.progress = progress
        self.extra = list(extra)
        self.png_dir = Path(pv.png_dir) if pv.png_dir else self.data_dir / "previews"
        self.centers = DetectorCenters()
        #: centres fixed by a scan's metadata or its series: they come before any remembered one
        self.pinned = PinnedCenters()
        self.service = ReconService()
        self.service.listeners.append(self.centers.from_outcome)
        self.service.listeners.append(self.pinned.remember)
        self.publisher: Any = None
        outputs: list[Any] = []
        if pv.zmq_address:  # first: a viewer must not wait on files or Tiled
            from ..sinks.preview_stream import PreviewPublisher

            self.publisher = PreviewPublisher(pv.zmq_address)
            outputs.append(self.publisher)
        from ..sinks.preview_outputs import PreviewFileWriter, PreviewTiledWriter

        outputs.append(PreviewFileWriter(self.png_dir))
        self.result_writer = None
        #: the final preview's Tiled writer (the session gives it a spool and an error list)
        self.preview_tiled: Any = None
        if processed is not None:
            from ..results.writer import TiledResultWriter

            self.preview_tiled = PreviewTiledWriter(processed, settings.recon)
            outputs.append(self.preview_tiled)
            in_place = settings.tiled.register_in_place if register_in_place is None else register_in_place
            self.result_writer = TiledResultWriter(processed, png_dir=self.png_dir,
                                                   register_in_place=bool(in_place))
        #: answers the web page's slice moves for the runs previewed here
        self.control: Any = None
        if pv.control_address:
            from ..sinks.preview_control import PreviewControlServer

            self.control = PreviewControlServer(pv.control_address, self.move_slices)
        outputs.extend(preview_outputs)
        outputs.append(self.centers.from_preview)
        self.preview_outputs = outputs
        #: the last few live previews (callers wait on their finals)
        self.previews: list[Any] = []
        #: called with each run's scan health (sinks.scan_health_sink.HealthUpdate) as it changes;
        #: on the 0MQ preview socket too, so a remote plan hears it at its own pace
        self.health_outputs = list(health_outputs)
        if self.publisher is not None:
            self.health_outputs.insert(0, self.publisher.publish_health)

    def health(self) -> ScanHealthSink:
        """The scan's health, frame by frame (put before the preview: its final carries it)."""
        return ScanHealthSink(self.health_outputs)

    def preview(self, health: ScanHealthSink | None = None) -> Sink:
        """A live three-slice preview with the settings' binning, positions, filter and budgets;
        ``health`` adds its findings to every update's metadata."""
        from ..sinks.preview import PreviewSink

        pv, recon = self.settings.preview, self.settings.recon
        center = recon.center if isinstance(recon.center, float | int) else None
        sink = PreviewSink(self.preview_outputs, binning=pv.binning, positions=pv.positions, center=center,
                           fallback_center=self.previous_center, filter_name=recon.filter_name,
                           device=recon.device, max_queue_bytes=self.max_queue_bytes,
                           publish_interval_s=pv.publish_interval_s,
                           final_budget_s=pv.final_budget_s, refine_center=pv.refine_center,
                           extra_metadata=health.metadata if health is not None else None)
        self.previews.append(sink)
        del self.previews[:-16]  # older ones are long final
        return sink

    def move_slices(self, run_uid: str, wanted: dict[str, int]) -> dict[str, int]:
        """Move the live slices of run ``run_uid`` (while it runs here) to ``wanted``."""
        for sink in reversed(self.previews):
            if sink.run_uid == run_uid:
                return sink.move_slices(wanted)
        raise ValueError(f"run {run_uid} is not being previewed here (not started, or long finished)")

    def previous_center(self, spec: Any) -> float | None:
        """Where a scan's live preview starts when the parameters give no centre: the centre
        pinned by its metadata or series, else the one its detector remembers."""
        pinned = self.pinned.pinned(spec.metadata)
        return pinned if pinned is not None else self.centers.previous(spec)

    def volume(self) -> Sink:
        """The full volume within the memory budget: grown during the scan (binning > 1,
        ``full_volume_streaming``), else made at stop from the raw scan."""
        recon = self.settings.recon
        if self.settings.full_volume_streaming and recon.binning > 1 and recon.rows is None:
            from ..sinks.streaming_volume import StreamingVolumeSink

            return StreamingVolumeSink(
                recon, self.service, self.result_writer, progress=self.progress, data_dir=self.data_dir,
                budget=self.budget, center_for=self.pinned.center_for, fallback_center=self.previous_center,
                partial=self.partial_volume if self.result_writer is not None else None)
        return FullVolumeSink(self.settings.recon, self.service, VolumeAtStop(self.budget),
                              self.result_writer, progress=self.progress, data_dir=self.data_dir,
                              center_for=self.pinned.center_for, fallback_center=self.previous_center)

    def partial_volume(self, spec: Any, volume: Any, n_angles: int) -> None:
        """A volume from the angles so far, during the scan: a ``partial`` node in Tiled (replaced
        by each newer one), marked partial with how many projections it holds."""
        from ..results.tiled_results import write_reconstruction

        assert self.result_writer is not None
        write_reconstruction(
            self.result_writer.container(), raw_uid=spec.run_uid, params=self.settings.recon, volume=volume,
            kind="partial", metadata={"partial": True, "n_projections_used": int(n_angles),
                                      "n_projections_planned": spec.n_projections,
                                      "note": "limited-angle volume during the scan, sub-sampled"})

    def __call__(self) -> Sink:
        sinks: list[Sink] = []
        health = self.health() if self.settings.preview.scan_health else None
        if health is not None:
            sinks.append(health)
        if self.settings.preview.enabled:
            sinks.append(self.preview(health))
        if self.full_volume:
            sinks.append(self.volume())
        sinks.extend(make() for make in self.extra)
        return SinkFanout(sinks)

    def close(self) -> None:
        self.service.shutdown()
        if self.publisher is not None:
            self.publisher.close()
        if self.control is not None:
            self.control.close()
