"""An ophyd v1 simulated tomography camera: the legacy layouts sources must still read.

Two modes, both real data paths of older beamlines:

* default: the image travels *in* the events (``dtype: array``, filled), as ``ophyd.sim`` does;
* ``data_dir`` given: AreaDetector-style HDF5 (``/entry/data/data``) written per stage, referenced
  by Resource (spec ``AD_HDF5``, ``frame_per_point: 1``) and one Datum per frame
  (``point_number``), so the events carry only datum ids.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from .hdf5_writer import FrameFile
from .optics import FrameSimulator
from .stage import TomoStage

AD_HDF5_SPEC = "AD_HDF5"


class SimTomoDetectorV1(Device):
    """Simulated camera ``<name>_image`` (uint16 (ny, nx)) reading the v1 stage at each trigger.

    ``acquire_time`` (s) delays the trigger's completion, like an exposure.
    """

    image = Cpt(Signal, kind="hinted")
    acquire_time = Cpt(Signal, value=0.0, kind="config")

    def __init__(
        self,
        simulator: FrameSimulator,
        stage: TomoStage,
        *,
        name: str = "tomo_det",
        data_dir: Path | str | None = None,
        **kwargs: Any,
    ) -> None:
        if stage.flavour != "ophyd_v1":
            raise TypeError(f"SimTomoDetectorV1 needs an ophyd_v1 stage, got {stage.flavour!r}")
        super().__init__(name=name, **kwargs)
        self.simulator = simulator
        self.tomo_stage = stage
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._file: FrameFile | None = None
        self._resource_uid: str | None = None
        self._asset_docs: deque[tuple[str, dict[str, Any]]] = deque()

    @property
    def image_key(self) -> str:
        return self.image.name

    @property
    def external(self) -> bool:
        return self.data_dir is not None

    @property
    def current_file(self) -> Path | None:
        return self._file.path if self._file else None

    def stage(self) -> list[Any]:
        staged = super().stage()
        if self.data_dir is not None:
            self._open_file()
        return staged

    def unstage(self) -> list[Any]:
        if self._file is not None:
            self._file.close()
            self._file = None
        return super().unstage()

    def _open_file(self) -> None:
        name = f"{self.name}_{uuid.uuid4()}.h5"
        self._file = FrameFile(self.data_dir / name, self.simulator.physics.shape)
        self._resource_uid = str(uuid.uuid4())
        self._asset_docs.append(
            (
                "resource",
                {
                    "uid": self._resource_uid,
                    "spec": AD_HDF5_SPEC,
                    "root": str(self.data_dir),
                    "resource_path": name,
                    "resource_kwargs": {"frame_per_point": 1},
                    "path_semantics": "posix",
                },
            )
        )

    def trigger(self) -> DeviceStatus:
        state = self.tomo_stage.read_state()
        frame = self.simulator.acquire(
            angle_deg=state.angle_deg, shutter_open=state.shutter_open, sample_in=state.sample_in
        )
        if self.data_dir is not None:
            if self._file is None:
                raise RuntimeError(f"{self.name}: stage the detector before triggering (HDF5 file not open)")
            point = self._file.append(frame, state.angle_deg) - 1
            datum_id = f"{self._resource_uid}/{point}"
            self._asset_docs.append(
                (
                    "datum",
                    {
                        "resource": self._resource_uid,
                        "datum_id": datum_id,
                        "datum_kwargs": {"point_number": point},
                    },
                )
            )
            self.image.put(datum_id)
        else:
            self.image.put(frame)
        status = DeviceStatus(self)
        exposure = float(self.acquire_time.get())
        if exposure > 0:
            threading.Timer(exposure, status.set_finished).start()
        else:
            status.set_finished()
        return status

    def describe(self) -> dict[str, dict[str, Any]]:
        desc = super().describe()
        ny, nx = self.simulator.physics.shape
        key = desc[self.image_key]
        key.update(shape=[ny, nx], dtype="array", dtype_numpy="<u2")
        if self.external:
            key["external"] = "FILESTORE:"
        return desc

    def collect_asset_docs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        while self._asset_docs:
            yield self._asset_docs.popleft()
