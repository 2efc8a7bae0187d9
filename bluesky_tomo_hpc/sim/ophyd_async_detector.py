"""An ophyd-async StandardDetector that writes simulated tomography frames to a real HDF5 file.

Modelled on ``ophyd_async.sim.SimBlobDetector``: the blob pattern is replaced by a phantom frame
at the rotation stage's current state (angle, shutter, sample position). Frames are never put in
events: the detector emits StreamResource/StreamDatum, and consumers read the file (SWMR).

Each ``stage()`` closes the previous file and the next ``prepare``/``trigger`` opens a new one, so
re-staging the detector per stream gives every stream its own StreamResource.

Why it is ``Pausable``: a pause or a suspender (beam dump) rewinds the plan to its last checkpoint
and replays the point, so a frame taken after that checkpoint but never saved in an Event would
make the replayed point's StreamDatum span two frames, which bluesky refuses ("multiple indices in
a stream_datum document for one event") and the scan fails. On ``resume`` the detector waits for
its acquisition to end and forgets the frames no StreamDatum was made for: the file holds only the
frames the run's documents reference, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bluesky.protocols import StreamAsset
from ophyd_async.core import (
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    PathProvider,
    SignalR,
    StandardDetector,
    StaticPathProvider,
    StreamableDataProvider,
    StreamResourceDataProvider,
    StreamResourceInfo,
    TriggerInfo,
    UUIDFilenameProvider,
    WatchableAsyncStatus,
    soft_signal_r_and_setter,
)

from .hdf5_writer import ANGLE_PATH, DATA_PATH, FrameFile
from .optics import FrameSimulator
from .stage import TomoStage

logger = logging.getLogger(__name__)

#: suffix of the per-frame angle data key (the image key is the detector name itself)
ANGLE_SUFFIX = "-rotation_angle"


class _Acquisition:
    """Shared state of the three logics: the open file, timing, and the frame counter signal."""

    def __init__(self, simulator: FrameSimulator, stage: TomoStage) -> None:
        self.simulator = simulator
        self.stage = stage
        self.file: FrameFile | None = None
        self.exposure = 0.0
        self.period = 0.0
        self.number_of_frames = 1
        self.images_written, self._set_images_written = soft_signal_r_and_setter(int, 0)
        self.acquire_time, self.set_acquire_time = soft_signal_r_and_setter(float, 0.0, units="s")

    def open_file(self, path: Path) -> None:
        self.close_file()
        self.file = FrameFile(path, self.simulator.physics.shape)
        self._set_images_written(0)

    def drop_uncollected(self, collected: int) -> int:
        """Forget the frames after the first ``collected`` (written, never collected into an
        event); returns how many were dropped."""
        if self.file is None or self.file.frames_written <= collected:
            return 0
        dropped = self.file.frames_written - collected
        self.file.rewind_to(collected)
        self._set_images_written(collected)
        return dropped

    def close_file(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    async def acquire_frames(self) -> None:
        """Expose ``number_of_frames`` frames, reading the stage at mid-exposure."""
        if self.file is None:
            raise RuntimeError("detector file not open: prepare() the detector before acquiring")
        file = self.file
        start = time.monotonic()
        for i in range(self.number_of_frames):
            await asyncio.sleep(max(0.0, start + i * self.period + self.exposure / 2 - time.monotonic()))
            state = await self.stage.read_state_async()
            await asyncio.sleep(max(0.0, start + i * self.period + self.exposure - time.monotonic()))
            # computed off the event loop: large frames take long enough to stall the motors
            frame = await asyncio.to_thread(
                self.simulator.acquire,
                angle_deg=state.angle_deg,
                shutter_open=state.shutter_open,
                sample_in=state.sample_in,
            )
            self._set_images_written(file.append(frame, state.angle_deg))


@dataclass
class _TriggerLogic(DetectorTriggerLogic):
    acq: _Acquisition

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        # Unlike a camera, 0 means no exposure (not "keep the current one"): the exposure a
        # plan asks for, and records in start["tomo"], is always the one used.
        self.acq.exposure = livetime
        self.acq.set_acquire_time(livetime)
        self.acq.period = self.acq.exposure + deadtime
        self.acq.number_of_frames = num

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo(livetime=self.acq.exposure)


def _log_failure(task: asyncio.Task) -> None:
    # The detector only sees a frame-count timeout; the log says why the frames never came.
    if not task.cancelled() and task.exception() is not None:
        logger.error("simulated detector acquisition failed: %r", task.exception())


class _AcquireLogic(DetectorAcquireLogic):
    def __init__(self, acq: _Acquisition) -> None:
        self.acq = acq
        self.task: asyncio.Task | None = None

    async def start_acquiring(self) -> None:
        self.task = asyncio.create_task(self.acq.acquire_frames())
        self.task.add_done_callback(_log_failure)

    async def wait_for_idle(self) -> None:
        if self.task:
            await self.task

    async def ensure_stopped(self) -> None:
        if self.task:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class _RewindableProvider(StreamResourceDataProvider):
    """The stock provider, counting the collects that made documents and able to start over on
    a new file (see :meth:`SimTomoDetector.resume`)."""

    def __init__(self, uri: str, resources: Sequence[StreamResourceInfo], written: SignalR[int]) -> None:
        super().__init__(uri=uri, resources=resources, mimetype="application/x-hdf5",
                         collections_written_signal=written)
        self.collects_with_docs = 0

    async def make_stream_docs(self, collections_written: int,
                               collections_per_event: int) -> AsyncIterator[StreamAsset]:
        made = False
        async for doc in super().make_stream_docs(collections_written, collections_per_event):
            made = True
            yield doc
        self.collects_with_docs += made

    def restart(self, uri: str) -> None:
        """Describe a new, empty file: a new StreamResource, indices from 0."""
        self.__init__(uri, self.resources, self.collections_written_signal)


class _DataLogic(DetectorDataLogic):
    def __init__(self, acq: _Acquisition, path_provider: PathProvider) -> None:
        self.acq = acq
        self.path_provider = path_provider
        self.datakey_name = ""
        #: the provider of the open file: how many frames it made StreamDatum for
        self.provider: _RewindableProvider | None = None

    def _open(self) -> str:
        """Open a new file; its URI."""
        info = self.path_provider(self.datakey_name)
        self.acq.open_file(Path(info.directory_path) / f"{info.filename}.h5")
        return f"{info.directory_uri}{info.filename}.h5"

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        self.datakey_name = datakey_name
        uri = self._open()
        ny, nx = self.acq.simulator.physics.shape
        image = StreamResourceInfo(
            data_key=datakey_name,
            shape=(ny, nx),
            chunk_shape=(1, ny, nx),
            dtype_numpy=np.dtype(np.uint16).str,
            parameters={"dataset": DATA_PATH},
        )
        angle = StreamResourceInfo(
            data_key=f"{datakey_name}{ANGLE_SUFFIX}",
            shape=(),
            chunk_shape=(1024,),
            dtype_numpy=np.dtype(np.float64).str,
            parameters={"dataset": ANGLE_PATH},
        )
        self.provider = _RewindableProvider(uri, [image, angle], self.acq.images_written)
        return self.provider

    def new_file(self) -> None:
        """Continue in a new file under a new StreamResource."""
        if self.provider is not None:
            self.provider.restart(self._open())

    async def stop(self) -> None:
        self.acq.close_file()
        self.provider = None

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return [datakey_name]


async def _awaited(pending: Any) -> None:
    await pending


def _finished(pending: Any) -> bool:
    done = pending.done  # a property of ophyd-async statuses, a method of asyncio tasks
    return bool(done() if callable(done) else done)


class SimTomoDetector(StandardDetector):
    """Simulated tomography camera (ophyd-async) writing ``/entry/data/data`` (n, ny, nx) uint16.

    Data keys: ``<name>`` (image, shape [1, ny, nx]) and ``<name>-rotation_angle`` (deg at
    mid-exposure, shape [1]), both external (``STREAM:``) in the same file.
    """

    def __init__(
        self,
        simulator: FrameSimulator,
        stage: TomoStage,
        path_provider: PathProvider | Path | str,
        name: str = "det",
    ) -> None:
        if stage.flavour != "ophyd_async":
            raise TypeError(f"SimTomoDetector needs an ophyd_async stage, got {stage.flavour!r}")
        if not callable(path_provider):
            path_provider = StaticPathProvider(UUIDFilenameProvider(), Path(path_provider).resolve())
        self._acq = _Acquisition(simulator, stage)
        self._sim_acquire = _AcquireLogic(self._acq)
        self._sim_data = _DataLogic(self._acq, path_provider)
        self.simulator = simulator
        self.tomo_stage = stage
        self.acquire_time = self._acq.acquire_time
        #: frames dropped on resume (taken after the last checkpoint, never in an event)
        self.dropped_on_resume = 0
        self._last_trigger: WatchableAsyncStatus | None = None
        self.add_detector_logics(_TriggerLogic(self._acq), self._sim_acquire, self._sim_data)
        self.add_config_signals(self.acquire_time)
        super().__init__(name=name)

    def trigger(self) -> WatchableAsyncStatus:
        """As the standard detector's, remembered so that :meth:`resume` can let it end."""
        self._last_trigger = super().trigger()
        return self._last_trigger

    async def pause(self) -> None:
        """Called by the RunEngine when it pauses or suspends: nothing to stop (a frame being
        exposed finishes; :meth:`resume` drops it if no event took it)."""

    async def resume(self) -> None:
        """Called by the RunEngine before it replays from the last checkpoint: forget the frames
        written since the last one collected, so the replayed point gets one frame."""
        # the interrupted trigger (it may not have started its exposure yet) ends first
        for pending in (self._last_trigger, self._sim_acquire.task):
            if pending is not None and not _finished(pending):
                with suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(_awaited(pending))),
                                           timeout=max(10.0, 10 * self._acq.period))
        provider = self._sim_data.provider
        if provider is None:
            return
        if provider.collects_with_docs == 1:
            # Only one collect made documents, the first, with the StreamResource: if the pause
            # came before its Event was saved, bluesky dropped them, and later StreamDatum would
            # name a resource nobody saw. Which it was cannot be known here, so carry on in a new
            # file with a new StreamResource (the old file keeps what an Event may reference).
            self._sim_data.new_file()
            logger.info("%s: paused at the stream's first frame; continuing in a new file", self.name)
            return
        dropped = self._acq.drop_uncollected(provider.last_emitted)
        if dropped:
            self.dropped_on_resume += dropped
            logger.info("%s: %d frame(s) taken after the last checkpoint dropped on resume",
                        self.name, dropped)

    @property
    def current_file(self) -> Path | None:
        """The HDF5 file being written (None between stages)."""
        return self._acq.file.path if self._acq.file else None
