"""Frames read from a run's documents, turned into the ``FrameBatch`` stream a sink consumes.

Frames that need something still to come (a measured angle from a later Event or StreamDatum, the
time of their Event, a monitor reading after them) are *held* briefly; frames that arrive before
the sink can open (its frame shape is only known from real frames) are *pending*. Each role's
frames are numbered on across descriptors, angles come from events, the angle stream, a monitor
stream or the plan, and the stop closes the sink with what arrived. ``TomoRun`` (:mod:`.run`)
reads the documents and feeds :meth:`FrameAssembly._add`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model import FrameBatch, FrameRole, ScanEnd, ScanSpec
from .darkflat import DarkFlatSet

log = logging.getLogger(__name__)

__all__ = ["Chunk", "FrameAssembly"]


@dataclass
class Chunk:
    """Frames read but not yet sent (waiting for the sink to open or for their angles)."""

    role: FrameRole
    indices: np.ndarray
    frames: np.ndarray
    seq_nums: np.ndarray | None
    origin: tuple[str, str, int, int] | None
    timestamps: np.ndarray | None = None
    #: the descriptor (stream) the frames came from: ``indices`` and ``seq_nums`` count within it
    descriptor: str = ""


class FrameAssembly:
    """Held and pending frames of one run, their angles and indices, the sink's open and close.

    A base of :class:`~.run.TomoRun`, which owns the state these methods use (set in its
    ``__init__``) and reads the documents."""

    def _add(self, chunk: Chunk) -> None:
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

    def _times_known(self, chunk: Chunk) -> bool:
        return chunk.timestamps is not None or chunk.seq_nums is None or all(
            (chunk.descriptor, int(s)) in self.event_time for s in chunk.seq_nums)

    def _ready(self, chunk: Chunk, *, force_times: bool = False) -> bool:
        if chunk.role is FrameRole.PROJECTION and self._angle_source() != "planned":
            return self._angles_for(chunk) is not None
        return force_times or self._times_known(chunk)

    def _angle_source(self) -> str:
        if self.angle_key is not None:
            return "events"  # by Event (internal key) or by StreamDatum of the angle key
        if self.monitor_desc:
            return "monitor"  # interpolated in time from a monitor stream
        return "planned"

    def _chunk_times(self, chunk: Chunk) -> np.ndarray | None:
        if chunk.timestamps is not None:
            return chunk.timestamps
        if chunk.seq_nums is None:
            return None
        keys = [(chunk.descriptor, int(s)) for s in chunk.seq_nums]
        if not all(k in self.event_time for k in keys):
            return None
        return np.array([self.event_time[k] for k in keys])

    def _angles_for(self, chunk: Chunk, *, final: bool = False) -> np.ndarray | None:
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

    def _role_indices(self, chunk: Chunk) -> np.ndarray:
        """The chunk's indices within its role: the first descriptor of a role counts from 0,
        a later one (the stream re-described) from where the role's frames had got to."""
        offset = self.desc_offset.get(chunk.descriptor)
        if offset is None:
            seen = any(self.descriptors.get(d, ("", None))[1] is chunk.role for d in self.desc_offset)
            offset = self.desc_offset[chunk.descriptor] = self.running[chunk.role] if seen else 0
        indices = np.asarray(chunk.indices) + offset
        self.running[chunk.role] = max(self.running[chunk.role], int(indices[-1]) + 1)
        return indices

    def _emit(self, chunk: Chunk) -> None:
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
            self._count(batch)
            return
        if self.sink is None and not self._try_open():
            self.pending.append(batch)
            return
        self._send(batch)

    def _count(self, batch: FrameBatch) -> None:
        """Count the frames of new indices only: a point retaken after a pause or a suspender
        repeats its Event's seq_num, so its index; sinks keep the last copy of an index."""
        seen = self.sent_indices.setdefault(batch.role, set())
        new = {int(i) for i in np.asarray(batch.indices).tolist()} - seen
        seen |= new
        self.counts[batch.role] += len(new)
        self.retaken += len(batch) - len(new)

    def _send(self, batch: FrameBatch) -> None:
        self._count(batch)
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
        if self.retaken:
            log.info("run %s: %d frame(s) retaken (a pause or a suspender); the last copy of each "
                     "is used", self.run_uid, self.retaken)
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
