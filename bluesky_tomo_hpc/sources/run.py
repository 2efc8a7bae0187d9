"""The state of one tomography run while its documents arrive: ``TomoRun``.

Frames are keyed by *(descriptor -> stream -> role, index)*, never by "the next event". Frames
that need something still to come (a measured angle from a later Event or StreamDatum, the time
of their Event) are *held* briefly; frames that arrive before the sink can open (its frame shape
is only known from real frames) are *pending*. The owning ``TomoRunRouter`` supplies the sink
factory, the dark/flat cache and resolver, and collects error reports.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from event_model import DocumentRouter

from ..model import FrameBatch, FrameRole, ScanEnd, ScanSpec
from ..sinks.sink import Sink
from .darkflat import DarkFlatCache, DarkFlatResolver, DarkFlatSet
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


@dataclass
class _Chunk:
    """Frames read but not yet sent (waiting for the sink to open or for their angles)."""

    role: FrameRole
    indices: np.ndarray
    frames: np.ndarray
    seq_nums: np.ndarray | None
    origin: tuple[str, str, int, int] | None
    timestamps: np.ndarray | None = None
    #: the descriptor (stream) the frames came from: ``indices`` and ``seq_nums`` count within it
    descriptor: str = ""


def _range(doc: Mapping[str, Any], key: str) -> tuple[int, int]:
    r = doc[key]
    return int(r["start"]), int(r["stop"])


def _frame_shape(data_key: Mapping[str, Any]) -> tuple[int, int] | None:
    shape = [int(s) for s in data_key.get("shape") or [] if s is not None]
    if len(shape) >= 2 and shape[-1] > 1 and shape[-2] > 1:
        return shape[-2], shape[-1]
    return None


class TomoRun(DocumentRouter):
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
        self.held: list[_Chunk] = []  # waiting for their angles (or event times)
        self.event_angle: dict[tuple[str, int], float] = {}  # (descriptor, seq_num) -> radians
        self.frame_angle: dict[tuple[str, int], float] = {}  # (descriptor, frame) -> radians
        self.event_time: dict[tuple[str, int], float] = {}  # (descriptor, seq_num) -> time
        # A role's frames are numbered on across descriptors: a stream re-described mid-run
        # (new configuration) restarts its seq_nums at 1, its frames must not overwrite others.
        self.running: dict[FrameRole, int] = dict.fromkeys(FrameRole, 0)  # next index per role
        self.desc_offset: dict[str, int] = {}
        self.desc_running: dict[tuple[str, str], int] = {}  # (descriptor, key) -> frames seen
        self.counts: dict[FrameRole, int] = dict.fromkeys(FrameRole, 0)
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
                self._add(_Chunk(role, index, frames, np.full(k, seq), None, np.full(k, t), desc))
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
        self._add(_Chunk(role, index, got.frames, np.full(fpp, seq),
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
        chunk = _Chunk(role, index, frames, seqs, (got.path, got.dataset, i0, i1), None, desc)
        chunk.timestamps = self._chunk_times(chunk)
        self._add(chunk)

    def stop(self, doc: dict[str, Any]) -> None:
        try:
            self._finish(doc)
        finally:
            self.reader.close()

    # -- assembling the stream ----------------------------------------------------------------
    def _add(self, chunk: _Chunk) -> None:
        if self.skipped:
            return
        if self.frame_shape is None:
            self.frame_shape = (int(chunk.frames.shape[1]), int(chunk.frames.shape[2]))
            self.dtype = str(chunk.frames.dtype)
        elif tuple(chunk.frames.shape[1:]) != self.frame_shape:
            self.report(f"{chunk.role.value} frames {chunk.indices[0]}.. have shape "
                        f"{chunk.frames.shape[1:]}, the run's frames are {self.frame_shape}; dropped")
            return
        # frames held only for their event's timestamp wait no longer once newer frames
        # arrive: a fly scan sends no events
        self._release(force_times=True)
        if self._ready(chunk):
            self._emit(chunk)
            return
        self.held.append(chunk)
        # an angle announced in the descriptor may never come (a fly scan with no events):
        # don't hold frames back from live consumers without bound
        limit = self.owner.max_held_frames
        while sum(len(c.indices) for c in self.held if c.role is FrameRole.PROJECTION) > limit:
            oldest = next(c for c in self.held if c.role is FrameRole.PROJECTION)
            self.held.remove(oldest)
            self._emit(oldest)

    def _times_known(self, chunk: _Chunk) -> bool:
        return chunk.timestamps is not None or chunk.seq_nums is None or all(
            (chunk.descriptor, int(s)) in self.event_time for s in chunk.seq_nums)

    def _ready(self, chunk: _Chunk, *, force_times: bool = False) -> bool:
        if chunk.role is FrameRole.PROJECTION and self._angle_source() != "planned":
            return self._angles_for(chunk) is not None
        return force_times or self._times_known(chunk)

    def _angle_source(self) -> str:
        if self.angle_key is not None:
            return "events"  # by Event (internal key) or by StreamDatum of the angle key
        if self.monitor_desc:
            return "monitor"  # interpolated in time from a monitor stream
        return "planned"

    def _chunk_times(self, chunk: _Chunk) -> np.ndarray | None:
        if chunk.timestamps is not None:
            return chunk.timestamps
        if chunk.seq_nums is None:
            return None
        keys = [(chunk.descriptor, int(s)) for s in chunk.seq_nums]
        if not all(k in self.event_time for k in keys):
            return None
        return np.array([self.event_time[k] for k in keys])

    def _angles_for(self, chunk: _Chunk, *, final: bool = False) -> np.ndarray | None:
        if self._angle_source() == "monitor":
            times = self._chunk_times(chunk)
            if times is None or not self.monitor:
                return None
            t, v = np.array(self.monitor).T
            if not final and t[-1] < times.max():
                return None  # wait for a monitor reading after the frame, to interpolate
            return np.interp(times, t, v)
        out = np.empty(len(chunk.indices))
        for j, idx in enumerate(chunk.indices):
            a = self.frame_angle.get((chunk.descriptor, int(idx)))
            if a is None and chunk.seq_nums is not None:
                a = self.event_angle.get((chunk.descriptor, int(chunk.seq_nums[j])))
            if a is None:
                return None
            out[j] = a
        return out

    def _release(self, *, force_times: bool = False) -> None:
        held, self.held = self.held, []
        for chunk in held:
            if self._ready(chunk, force_times=force_times):
                self._emit(chunk)
            else:
                self.held.append(chunk)

    def _role_indices(self, chunk: _Chunk) -> np.ndarray:
        """The chunk's indices within its role: the first descriptor of a role counts from 0,
        a later one (the stream re-described) from where the role's frames had got to."""
        offset = self.desc_offset.get(chunk.descriptor)
        if offset is None:
            seen = any(self.descriptors.get(d, ("", None))[1] is chunk.role for d in self.desc_offset)
            offset = self.desc_offset[chunk.descriptor] = self.running[chunk.role] if seen else 0
        indices = np.asarray(chunk.indices) + offset
        self.running[chunk.role] = max(self.running[chunk.role], int(indices[-1]) + 1)
        return indices

    def _emit(self, chunk: _Chunk) -> None:
        indices = self._role_indices(chunk)
        angles = None
        if chunk.role is FrameRole.PROJECTION:
            angles = self._angles_for(chunk, final=True)
            if angles is None:
                planned = self.layout.planned_angles()
                if planned is not None and int(indices[-1]) < len(planned):
                    angles = planned[indices]
                    if self._angle_source() != "planned":
                        self.planned_used += len(chunk.indices)
                elif not self.no_angle_reported:
                    self.no_angle_reported = True
                    self.report("no rotation angles: no rotation_axis data key in the projection "
                                "events and no start['tomo']['angles'] to plan them; projections "
                                "are sent without angles")
        if chunk.timestamps is None:
            chunk.timestamps = self._chunk_times(chunk)
        batch = FrameBatch(role=chunk.role, indices=indices, frames=chunk.frames,
                           angles=angles, timestamps=chunk.timestamps, run_uid=self.run_uid,
                           origin=chunk.origin)
        if self.layout.layout == "dark_flat":
            self.darkflat_batches.append(batch)
            self.counts[chunk.role] += len(batch)
            return
        if self.sink is None and not self._try_open():
            self.pending.append(batch)
            return
        self._send(batch)

    def _send(self, batch: FrameBatch) -> None:
        self.counts[batch.role] += len(batch)
        self._call_sink("add", batch)

    def _try_open(self) -> bool:
        """Open the sink once the projection stream exists and the frame shape is known."""
        if self.sink is not None:
            return True
        if self.skipped or not self.projection_seen or self.frame_shape is None:
            return False
        lay = self.layout
        start = self.start_doc
        streams = dict(lay.streams)
        n_darks, n_flats = lay.num_darks, lay.num_flats
        darkflat = None
        if lay.layout == "separate":
            for role in ("dark", "flat"):
                streams[role] = f"run:{lay.dark_flat_uid}/{role}"
            darkflat = self._find_dark_flat()
            n_darks = darkflat.count(FrameRole.DARK) if darkflat else 0
            n_flats = darkflat.count(FrameRole.FLAT) if darkflat else 0
        self.spec = ScanSpec(
            run_uid=self.run_uid, frame_shape=self.frame_shape, dtype=self.dtype or "uint16",
            detector_key=self.det_key or "", scan_id=start.get("scan_id"),
            plan_name=start.get("plan_name"),
            n_projections=lay.num_projections, n_darks=n_darks, n_flats=n_flats,
            angle_units=lay.angle_units, streams=streams, dark_flat_uid=lay.dark_flat_uid,
            raw_files=tuple(self.raw_files), source="documents",
            metadata={"tomo": lay.tomo, "preset": lay.preset,
                      "sample": start.get("sample", lay.tomo.get("sample")), "series": start.get("series"),
                      "start": {k: start[k] for k in ("plan_name", "scan_id", "time", "detectors",
                                                      "motors", "data_session") if k in start}},
        )
        try:
            self.sink = self.owner.sink_factory()
        except Exception as exc:
            self.sink_broken = True
            self.sink = None
            log.exception("sink_factory failed for run %s", self.run_uid)
            self.report(f"sink_factory failed: {exc!r}")
            self.skipped = "sink_factory failed"
            return False
        self._call_sink("open", self.spec)
        if darkflat is not None:
            for batch in darkflat.for_run(self.run_uid):
                self._send(batch)
        for batch in self.pending:
            self._send(batch)
        self.pending.clear()
        return True

    def _find_dark_flat(self) -> DarkFlatSet | None:
        """The frames of the dark/flat run this run names: seen recently, or resolved."""
        uid = self.layout.dark_flat_uid or ""
        found: DarkFlatSet | None = self.owner.dark_flat_cache.get(uid)
        if found is None and self.owner.dark_flat_resolver is not None:
            try:
                found = self.owner.dark_flat_resolver(uid)
            except Exception as exc:
                self.report(f"dark_flat_resolver({uid!r}) failed: {exc!r}")
                found = None
            if found is not None:
                self.owner.dark_flat_cache.put(found)
        if found is None:
            self.report(f"dark/flat run {uid!r} named by start['tomo']['dark_flat_uid'] was not "
                        "seen recently and no resolver found it: this scan has no darks or flats")
        return found

    def _finish(self, doc: dict[str, Any]) -> None:
        lay = self.layout
        if self.skipped:
            if self.sink is not None:
                self._call_sink("close", ScanEnd(self.run_uid, "fail", f"skipped: {self.skipped}",
                                                 {r.value: n for r, n in self.counts.items()},
                                                 doc.get("time")))
            return
        held, self.held = self.held, []
        for chunk in held:
            self._emit(chunk)
        if self.planned_used:
            source = self.angle_key or "monitor stream"
            self.report(f"{self.planned_used} projections had no measured angle ({source!r}); "
                        "their planned angles (start['tomo']['angles']) were used",
                        level=logging.WARNING)
        for datum_id in self.waiting_datum:
            self.report(f"event refers to datum {datum_id!r} that never arrived; frames lost")
        if lay.layout == "dark_flat":
            item = DarkFlatSet(uid=self.run_uid, batches=tuple(self.darkflat_batches))
            self.owner.dark_flat_cache.put(item)
            for role in (FrameRole.DARK, FrameRole.FLAT):
                if item.count(role) == 0:
                    self.report(f"dark/flat run has no {role.value} frames "
                                f"(stream {lay.streams.get(role.value)!r})")
            log.info("dark/flat run %s cached: %d darks, %d flats", self.run_uid,
                     item.count(FrameRole.DARK), item.count(FrameRole.FLAT))
            return
        if not self.projection_seen:
            self.skip(f"projection stream {lay.streams.get('projection')!r} missing "
                      f"(streams seen: {sorted({s for s, _ in self.descriptors.values()})})")
            return
        if self.sink is None and not self._try_open():
            self.report("no frames arrived for this run; nothing to reconstruct")
            return
        if lay.layout == "streams":
            for role in (FrameRole.DARK, FrameRole.FLAT):
                if self.counts[role] == 0:
                    self.report(f"no {role.value} frames: stream {lay.streams.get(role.value)!r} "
                                "absent or empty; normalisation will need them from elsewhere")
        expected = lay.num_projections
        got = self.counts[FrameRole.PROJECTION]
        reason = doc.get("reason", "") or ""
        if expected is not None and got != expected:
            note = f"{got} of {expected} planned projections"
            reason = f"{reason}; {note}" if reason else note
            self.report(note, level=logging.WARNING)
        self._call_sink("close", ScanEnd(
            run_uid=self.run_uid, exit_status=doc.get("exit_status", "success"), reason=reason,
            num_frames={r.value: n for r, n in self.counts.items()},
            time=doc.get("time", time.time())))
