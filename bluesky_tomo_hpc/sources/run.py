"""The state of one tomography run while its documents arrive: ``TomoRun``.

This module reads the documents: descriptors say which stream holds which role, events,
datums and stream_datums say where the frames and their angles are. Frames are keyed by
*(descriptor -> stream -> role, index)*, never by "the next event". What happens to the frames
once read (held for angles, pending until the sink opens, sent) is :mod:`.frame_assembly`. The
owning ``TomoRunRouter`` supplies the sink factory, the dark/flat cache and resolver, and collects
error reports.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
from event_model import DocumentRouter

from ..model import FrameBatch, FrameRole, ScanSpec
from ..sinks.sink import Sink
from .darkflat import DarkFlatCache, DarkFlatResolver
from .frame_assembly import Chunk, FrameAssembly
from .hdf5 import AD_HDF5_DATASET, AD_HDF5_SPECS, SwmrReader, path_from_uri
from .recognise import TomoLayout


class RunOwner(Protocol):
    """What a :class:`TomoRun` needs from the router that owns it (``TomoRunRouter``)."""

    read_timeout: float
    root_map: dict[str, str]
    max_held_frames: int
    sink_factory: Callable[[], Sink]
    dark_flat_cache: DarkFlatCache
    dark_flat_resolver: DarkFlatResolver | None

    def report(self, run_uid: str, message: str, *, level: int = ..., record: bool | None = ...) -> None:
        ...

log = logging.getLogger(__name__)

__all__ = ["TomoRun"]

_ROLES = {"projection": FrameRole.PROJECTION, "dark": FrameRole.DARK, "flat": FrameRole.FLAT}


def _range(doc: Mapping[str, Any], key: str) -> tuple[int, int]:
    r = doc[key]
    return int(r["start"]), int(r["stop"])


def _frame_shape(data_key: Mapping[str, Any]) -> tuple[int, int] | None:
    shape = [int(s) for s in data_key.get("shape") or [] if s is not None]
    if len(shape) >= 2 and shape[-1] > 1 and shape[-2] > 1:
        return shape[-2], shape[-1]
    return None


class TomoRun(FrameAssembly, DocumentRouter):
    """The state of one tomography run, from its start to its stop document."""

    def __init__(self, owner: RunOwner, layout: TomoLayout):
        super().__init__()
        self.owner = owner
        self.layout = layout
        self.run_uid = ""
        self.start_doc: dict[str, Any] = {}
        self.skipped: str | None = None
        self.det_key: str | None = layout.detector
        self.angle_key: str | None = None
        self.angle_external = False
        self.descriptors: dict[str, tuple[str, FrameRole | None]] = {}
        self.projection_seen = False
        self.reader = SwmrReader(timeout=owner.read_timeout)
        self.sink: Sink | None = None
        self.sink_broken = False
        self.spec: ScanSpec | None = None
        self.frame_shape: tuple[int, int] | None = None
        self.dtype: str | None = None
        self.raw_files: list[str] = []
        self.resources: dict[str, dict[str, Any]] = {}
        self.stream_resources: dict[str, dict[str, Any]] = {}
        self.datums: dict[str, tuple[str, dict[str, Any]]] = {}
        self.waiting_datum: dict[str, list[tuple[FrameRole, str, int, float]]] = {}
        self.pending: list[FrameBatch] = []  # before the sink opens
        self.held: list[Chunk] = []  # waiting for their angles (or event times)
        self.event_angle: dict[tuple[str, int], float] = {}  # (descriptor, seq_num) -> radians
        self.frame_angle: dict[tuple[str, int], float] = {}  # (descriptor, frame) -> radians
        self.event_time: dict[tuple[str, int], float] = {}  # (descriptor, seq_num) -> time
        # A role's frames are numbered on across descriptors: a stream re-described mid-run
        # (new configuration) restarts its seq_nums at 1, its frames must not overwrite others.
        self.running: dict[FrameRole, int] = dict.fromkeys(FrameRole, 0)  # next index per role
        self.desc_offset: dict[str, int] = {}
        self.desc_running: dict[tuple[str, str], int] = {}  # (descriptor, key) -> frames seen
        self.counts: dict[FrameRole, int] = dict.fromkeys(FrameRole, 0)  # distinct indices sent
        self.sent_indices: dict[FrameRole, set[int]] = {}
        self.retaken = 0  # frames of an index sent before (a point taken again after a pause)
        self.darkflat_batches: list[FrameBatch] = []
        self.monitor_desc: dict[str, str] = {}  # descriptor uid -> angle key of a monitor stream
        self.monitor: list[tuple[float, float]] = []  # (time, radians)
        self.det_dtype: dict[str, str] = {}  # descriptor uid -> numpy dtype of the image
        self.no_angle_reported = False
        self.planned_used = 0  # projections sent with planned angles for lack of a measured one

    # -- helpers ----------------------------------------------------------------------------
    def report(self, message: str, *, level: int = logging.ERROR, record: bool | None = None) -> None:
        self.owner.report(self.run_uid, message, level=level, record=record)

    def skip(self, why: str) -> None:
        if self.skipped is None:
            self.skipped = why
            self.report(f"run skipped: {why}", level=logging.WARNING, record=True)
            self.pending.clear()
            self.held.clear()

    def to_radians(self, value: Any) -> float:
        v = float(np.asarray(value, dtype=np.float64).ravel()[0])
        return v if self.layout.angle_units == "rad" else float(np.radians(v))

    def _call_sink(self, method: str, arg: Any) -> None:
        if self.sink is None or self.sink_broken:
            return
        try:
            getattr(self.sink, method)(arg)
        except Exception as exc:  # a sink fault must never reach the RunEngine
            self.sink_broken = True
            log.exception("sink %s.%s failed for run %s", type(self.sink).__name__, method,
                          self.run_uid)
            self.report(f"sink {type(self.sink).__name__}.{method} failed: {exc!r}; "
                        "no more frames of this run go to it")

    # -- document handlers ------------------------------------------------------------------
    def start(self, doc: dict[str, Any]) -> None:
        self.start_doc = doc
        self.run_uid = doc["uid"]
        log.info("tomography run %s recognised (layout %s%s)", self.run_uid, self.layout.layout,
                 f", preset {self.layout.preset}" if self.layout.preset else "")

    def descriptor(self, doc: dict[str, Any]) -> None:
        stream = doc.get("name", "primary")
        role_name = self.layout.role_of_stream(stream)
        role = _ROLES.get(role_name) if role_name else None
        self.descriptors[doc["uid"]] = (stream, role)
        data_keys = doc.get("data_keys", {})
        axis = self.layout.rotation_axis
        if role is None and axis and axis in data_keys and stream.endswith("_monitor"):
            # FXI fly scans: the stage angle is monitored in its own stream ("zps_pi_r_monitor")
            self.monitor_desc[doc["uid"]] = axis
            return
        if role is None or self.skipped:
            return
        if self.det_key is None:
            images = [k for k, dk in data_keys.items() if _frame_shape(dk)]
            if not images:
                self.skip(f"stream {stream!r} has no image data key (none with a 2-D shape) and "
                          "start['tomo'] names no 'detector'")
                return
            self.det_key = images[0]
        if self.det_key not in data_keys:
            self.skip(f"detector key {self.det_key!r} is not in stream {stream!r} "
                      f"(data keys: {sorted(data_keys)})")
            return
        dtype = data_keys[self.det_key].get("dtype_numpy")
        if dtype:
            self.det_dtype[doc["uid"]] = dtype
        if role is FrameRole.PROJECTION:
            self.projection_seen = True
            self._find_angle_key(data_keys)

    def _find_angle_key(self, data_keys: Mapping[str, Any]) -> None:
        axis = self.layout.rotation_axis
        if not axis:
            return
        matches = [k for k in data_keys if k == axis]
        matches += [k for k in data_keys if k.endswith((f"-{axis}", f"_{axis}")) and k != axis]
        if matches:
            self.angle_key = matches[0]
            self.angle_external = bool(data_keys[self.angle_key].get("external"))

    def resource(self, doc: dict[str, Any]) -> None:
        self.resources[doc["uid"]] = doc

    def datum_page(self, doc: dict[str, Any]) -> None:
        resource = doc["resource"]
        kwargs = doc["datum_kwargs"]
        for i, datum_id in enumerate(doc["datum_id"]):
            self.datums[datum_id] = (resource, {k: v[i] for k, v in kwargs.items()})
        for datum_id in doc["datum_id"]:
            for role, desc, seq, t in self.waiting_datum.pop(datum_id, ()):
                self._legacy_frames(role, desc, datum_id, seq, t)

    def stream_resource(self, doc: dict[str, Any]) -> None:
        self.stream_resources[doc["uid"]] = doc

    def event_page(self, doc: dict[str, Any]) -> None:
        if self.skipped:
            return
        if doc["descriptor"] in self.monitor_desc:
            values = doc["data"].get(self.monitor_desc[doc["descriptor"]], [])
            self.monitor += [(float(t), self.to_radians(v)) for t, v in zip(doc["time"], values,
                                                                            strict=False)]
            self.monitor.sort()
            self._release()
            return
        stream, role = self.descriptors.get(doc["descriptor"], (None, None))
        if role is None:
            return
        data = doc["data"]
        frames_col = data.get(self.det_key) if self.det_key else None
        angle_col = data.get(self.angle_key) if (self.angle_key and role is FrameRole.PROJECTION
                                                 and not self.angle_external) else None
        stamps = doc.get("timestamps", {}).get(self.det_key) if self.det_key else None
        desc = doc["descriptor"]
        for i, seq in enumerate(doc["seq_num"]):
            seq = int(seq)
            t = float(stamps[i]) if stamps is not None else float(doc["time"][i])
            self.event_time[(desc, seq)] = t
            if angle_col is not None:
                self.event_angle[(desc, seq)] = self.to_radians(angle_col[i])
            if frames_col is None:
                continue  # frames come by StreamDatum (or the key is absent from this event)
            value = frames_col[i]
            if isinstance(value, str):  # a datum id: frames are in a file (ophyd v1 AD_HDF5)
                self._legacy_frames(role, desc, value, seq, t)
            else:
                frames = np.asarray(value, dtype=self.det_dtype.get(desc))  # lists after JSON
                if frames.ndim == 2:
                    frames = frames[None]
                k = len(frames)
                index = np.arange((seq - 1) * k, seq * k)
                self._add(Chunk(role, index, frames, np.full(k, seq), None, np.full(k, t), desc))
        if self.held:
            self._release()

    def _legacy_frames(self, role: FrameRole, desc: str, datum_id: str, seq: int,
                       t: float) -> None:
        datum = self.datums.get(datum_id)
        resource = self.resources.get(datum[0]) if datum else None
        if datum is None or resource is None:
            self.waiting_datum.setdefault(datum_id, []).append((role, desc, seq, t))
            return
        spec = resource.get("spec")
        if spec not in AD_HDF5_SPECS:
            self.report(f"resource spec {spec!r} (datum {datum_id}) is not readable here; "
                        f"supported: {sorted(AD_HDF5_SPECS)}")
            return
        kwargs = resource.get("resource_kwargs", {})
        fpp = int(kwargs.get("frame_per_point", kwargs.get("multiplier", 1)))
        point = int(datum[1].get("point_number", seq - 1))
        root = resource.get("root", "") or ""
        path = os.path.join(self.owner.root_map.get(root, root), resource["resource_path"])
        try:
            got = self.reader.read(path, AD_HDF5_DATASET, point * fpp, (point + 1) * fpp)
        except Exception as exc:
            self.report(f"{role.value} frames of datum {datum_id}: {exc}")
            return
        if path not in self.raw_files:
            self.raw_files.append(path)
        index = np.arange((seq - 1) * fpp, seq * fpp)
        self._add(Chunk(role, index, got.frames, np.full(fpp, seq),
                         (got.path, got.dataset, got.start, got.stop), np.full(fpp, t), desc))
        if self.held:
            self._release()

    def stream_datum(self, doc: dict[str, Any]) -> None:
        if self.skipped:
            return
        desc = doc["descriptor"]
        stream, role = self.descriptors.get(desc, (None, None))
        if role is None:
            return
        sres = self.stream_resources.get(doc["stream_resource"])
        if sres is None:
            self.report(f"stream_datum {doc.get('uid')} names unknown stream_resource "
                        f"{doc['stream_resource']}")
            return
        key = sres.get("data_key")
        is_angle = role is FrameRole.PROJECTION and self.angle_external and key == self.angle_key
        if key != self.det_key and not is_angle:
            return
        if sres.get("mimetype") != "application/x-hdf5":
            self.report(f"stream_resource {sres['uid']} mimetype {sres.get('mimetype')!r} is not "
                        "readable here (only application/x-hdf5)")
            return
        i0, i1 = _range(doc, "indices")
        if i1 <= i0:
            return
        s0, s1 = _range(doc, "seq_nums") if "seq_nums" in doc else (0, 0)
        n, nseq = i1 - i0, s1 - s0
        if nseq > 0 and s0 >= 1 and n % nseq == 0:
            fpe = n // nseq
            index = np.arange((s0 - 1) * fpe, (s1 - 1) * fpe)
            seqs: np.ndarray | None = np.repeat(np.arange(s0, s1), fpe)
        else:  # seq_nums not filled in: number frames in arrival order
            first = self.desc_running.get((desc, key), 0)
            index = np.arange(first, first + n)
            seqs = None
        self.desc_running[(desc, key)] = max(self.desc_running.get((desc, key), 0),
                                             int(index[-1]) + 1)
        params = sres.get("parameters", {})
        path = path_from_uri(sres["uri"])
        dataset = params.get("dataset", AD_HDF5_DATASET)
        try:
            got = self.reader.read(path, dataset, i0, i1)
        except Exception as exc:
            self.report(f"{'angles' if is_angle else role.value + ' frames'} of stream "
                        f"{stream!r}: {exc}")
            return
        if is_angle:
            values = np.asarray(got.frames, dtype=np.float64).reshape(n, -1)[:, 0]
            for idx, v in zip(index, values, strict=True):
                self.frame_angle[(desc, int(idx))] = self.to_radians(v)
            self._release()
            return
        if path not in self.raw_files:
            self.raw_files.append(path)
        frames = got.frames
        if frames.ndim == 4:  # (n, collections, ny, nx) from some writers
            frames = frames.reshape(-1, *frames.shape[-2:])
        if frames.ndim != 3 or len(frames) != n:
            self.report(f"{path}:{dataset}[{i0}:{i1}] has shape {got.frames.shape}, "
                        "expected (n, ny, nx) frames")
            return
        chunk = Chunk(role, index, frames, seqs, (got.path, got.dataset, i0, i1), None, desc)
        chunk.timestamps = self._chunk_times(chunk)
        self._add(chunk)

    def stop(self, doc: dict[str, Any]) -> None:
        try:
            self._finish(doc)
        finally:
            self.reader.close()
