"""EPICS PV Access source: areaDetector NTNDArray frames (pvapy) -> ScanSpec / FrameBatch / ScanEnd.

Why: at ALS and APS the fastest path from the detector is the areaDetector PVA plugin, not
Bluesky documents. A PVA stream has no start or stop document, so this source decides:
  * what each frame is: an NDArray attribute (``frame_type`` "dark"/"flat"/"projection", or a
    NeXus ``image_key`` 2/1/0), else the latest value of a companion PV, else "projection";
  * its angle: an attribute (``rotation_angle``), else a companion PV (the rotary readback), else
    the planned angles ``(start, stop, num)`` by projection index;
  * where a scan starts and ends: a ``scan_uid`` attribute that changes, the expected number of
    projections (argument or ``num_projections`` attribute) reached, no frame for
    ``idle_timeout_s``, or :meth:`PvaSource.finish`.
Gaps in ``uniqueId`` (frames the server dropped for a slow client) are counted and reported in
``ScanEnd.num_frames["dropped"]``; the raw data of record is the detector's file, not this stream.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..extras import require
from ..model import FrameBatch, FrameRole, ScanEnd, ScanSpec, TomoDataError
from ..sinks.sink import Sink

#: what asks for pvapy, in the words of the command line
PVA_FEATURE = "PV Access frames (worker --pva)"

log = logging.getLogger(__name__)

#: NTNDArray union member -> NumPy dtype
VALUE_TYPES = {
    "ubyteValue": "uint8", "byteValue": "int8", "ushortValue": "uint16", "shortValue": "int16",
    "uintValue": "uint32", "intValue": "int32", "ulongValue": "uint64", "longValue": "int64",
    "floatValue": "float32", "doubleValue": "float64",
}
_KIND_NAMES = {
    "dark": FrameRole.DARK, "flat": FrameRole.FLAT, "white": FrameRole.FLAT, "bright": FrameRole.FLAT,
    "projection": FrameRole.PROJECTION, "data": FrameRole.PROJECTION, "proj": FrameRole.PROJECTION,
}
#: NeXus NXtomo image_key
_IMAGE_KEYS = {0: FrameRole.PROJECTION, 1: FrameRole.FLAT, 2: FrameRole.DARK}


def frame_role(value: Any) -> FrameRole:
    """A frame kind from a string name or a NeXus image_key; anything else is an error."""
    if isinstance(value, str):
        role = _KIND_NAMES.get(value.strip().lower())
        if role is None and value.strip().lstrip("-").isdigit():
            role = _IMAGE_KEYS.get(int(value))
    else:
        role = _IMAGE_KEYS.get(int(value)) if isinstance(value, (int, np.integer, float)) else None
    if role is None:
        raise TomoDataError(f"unknown frame kind {value!r}: expected dark/flat/projection or image_key 2/1/0")
    return role


@dataclass(frozen=True)
class NdFrame:
    """One decoded NTNDArray: the image, its uniqueId, timestamp and attributes."""

    unique_id: int
    image: np.ndarray
    timestamp: float
    attributes: dict[str, Any]


def decode_ntndarray(pv: Any) -> NdFrame | None:
    """Image (ny, nx), uniqueId, timestamp and attributes of a pvapy NTNDArray PvObject; None
    for an empty value (a record's initial NTNDArray). Compressed arrays are refused by name."""
    value = pv["value"]
    if isinstance(value, tuple):  # NtNdArray objects give (dict, types); monitor PvObjects a list
        value = value[0]
    elif isinstance(value, list):
        value = value[0] if value else {}
    if not value:
        return None
    key, arr = next(iter(value.items()))
    if key not in VALUE_TYPES:
        raise TomoDataError(f"NTNDArray value type {key!r} is not an image type")
    codec = pv["codec"]["name"] if "codec" in pv else ""
    if codec:
        raise TomoDataError(f"NTNDArray frame {pv['uniqueId']} is compressed with {codec!r}; "
                            "disable the codec plugin upstream of this PVA channel")
    dims = [int(d["size"]) for d in pv["dimension"]]
    if len(dims) != 2:
        raise TomoDataError(f"NTNDArray frame {pv['uniqueId']}: expected a 2-D mono image, dimensions {dims}")
    image = np.asarray(arr, dtype=VALUE_TYPES[key]).reshape(dims[1], dims[0])
    attrs = {}
    for a in pv["attribute"]:
        v = a["value"]
        v = v[0] if isinstance(v, (tuple, list)) else v
        attrs[a["name"]] = next(iter(v.values())) if isinstance(v, dict) and v else v
    ts = pv["timeStamp"]
    stamp = float(ts["secondsPastEpoch"]) + 1e-9 * float(ts["nanoseconds"])
    return NdFrame(unique_id=int(pv["uniqueId"]), image=image, timestamp=stamp or time.time(),
                   attributes=attrs)


class CompanionPV:
    """Latest value of a scalar PV (angle readback, frame kind), updated by a pvapy monitor."""

    def __init__(self, name: str):
        pva = require("pvaccess", PVA_FEATURE)

        self.name = name
        self.value: Any = None
        self._ch = pva.Channel(name, pva.PVA)
        self._ch.subscribe("tomo", self._update)
        self._ch.startMonitor("field(value)")

    def _update(self, pv: Any) -> None:
        self.value = pv["value"]

    def close(self) -> None:
        self._ch.stopMonitor()
        self._ch.unsubscribe("tomo")


class PvaSource:
    """Turns NTNDArray frames into the normalised stream and feeds ``sink``.

    ``on_frame`` is the pvapy monitor callback (public so that recorded or locally made
    NTNDArrays can be replayed through the same code). ``start`` connects to ``channel``.
    """

    def __init__(
        self,
        sink: Sink,
        channel: str,
        *,
        kind_attribute: str = "frame_type",
        angle_attribute: str = "rotation_angle",
        scan_attribute: str = "scan_uid",
        angle_units: str = "deg",
        angle_pv: str | None = None,
        kind_pv: str | None = None,
        planned_angles: tuple[float, float, int] | None = None,
        n_projections: int | None = None,
        idle_timeout_s: float | None = 5.0,
        queue_size: int = 32,
        metadata: Mapping[str, Any] | None = None,
        on_scan_end: Callable[[ScanEnd], None] | None = None,
    ):
        if angle_units not in ("deg", "rad"):
            raise ValueError(f"angle_units must be 'deg' or 'rad', got {angle_units!r}")
        self.sink = sink
        self.channel = channel
        self.kind_attribute = kind_attribute
        self.angle_attribute = angle_attribute
        self.scan_attribute = scan_attribute
        self.angle_units = angle_units
        self.angle_pv_name, self.kind_pv_name = angle_pv, kind_pv
        self.planned_angles = planned_angles
        self.n_projections = n_projections
        self.idle_timeout_s = idle_timeout_s
        self.queue_size = queue_size
        self.metadata = dict(metadata or {})
        self.on_scan_end = on_scan_end
        self._lock = threading.RLock()
        self._spec: ScanSpec | None = None
        self._scan_key: Any = None
        self._counts: dict[FrameRole, int] = {}
        self._last_uid: int | None = None
        self._dropped = 0
        self._last_frame = time.monotonic()
        self._expected: int | None = None
        self._companions: list[CompanionPV] = []
        self._angle_pv: CompanionPV | None = None
        self._kind_pv: CompanionPV | None = None
        self._channel: Any = None
        self._stop = threading.Event()
        #: set by the first monitor update (the record's current value): the channel is connected
        self.connected = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.scans_ended: list[ScanEnd] = []
        self.errors: list[str] = []

    # -- connection -----------------------------------------------------------------------
    def start(self, wait_connected_s: float | None = 10.0) -> None:
        """Connect the monitors (pvapy threads call :meth:`on_frame`) and the idle watchdog;
        wait up to ``wait_connected_s`` for the channel (a warning, not an error, if it is not up:
        the monitor connects whenever the IOC comes)."""
        pva = require("pvaccess", PVA_FEATURE)

        if self.angle_pv_name:
            self._angle_pv = CompanionPV(self.angle_pv_name)
            self._companions.append(self._angle_pv)
        if self.kind_pv_name:
            self._kind_pv = CompanionPV(self.kind_pv_name)
            self._companions.append(self._kind_pv)
        self._channel = pva.Channel(self.channel, pva.PVA)
        self._channel.subscribe("tomo", self.on_frame)
        self._channel.startMonitor(f"record[queueSize={self.queue_size}]field()")
        if self.idle_timeout_s:
            self._watchdog = threading.Thread(target=self._watch_idle, name="pva-idle", daemon=True)
            self._watchdog.start()
        if wait_connected_s and not self.connected.wait(wait_connected_s):
            log.warning("PVA channel %s not connected after %.0f s; still trying", self.channel,
                        wait_connected_s)

    def stop(self) -> None:
        """Disconnect, ending an open scan as aborted (its frames are on the detector's disk)."""
        self._stop.set()
        if self._channel is not None:
            self._channel.stopMonitor()
            self._channel.unsubscribe("tomo")
            self._channel = None
        for c in self._companions:
            c.close()
        self._companions.clear()
        self.finish(exit_status="abort", reason="PVA source stopped")

    def _watch_idle(self) -> None:
        while not self._stop.wait(min(0.2, self.idle_timeout_s or 0.2)):
            with self._lock:
                idle = time.monotonic() - self._last_frame
                if self._spec is not None and self.idle_timeout_s and idle > self.idle_timeout_s:
                    self._end_scan(reason=f"no frame for {idle:.1f} s")

    # -- frames ---------------------------------------------------------------------------
    def on_frame(self, pv: Any) -> None:
        """pvapy monitor callback: never raises (a bad frame is logged and counted)."""
        self.connected.set()
        try:
            frame = decode_ntndarray(pv)
            if frame is not None:
                self._handle(frame)
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}"
            self.errors.append(msg)
            log.error("PVA frame from %s refused: %s", self.channel, msg)

    def _handle(self, frame: NdFrame) -> None:
        with self._lock:
            self._last_frame = time.monotonic()
            scan_key = frame.attributes.get(self.scan_attribute)
            if self._spec is not None and scan_key is not None and scan_key != self._scan_key:
                self._end_scan(reason="next scan started")
            if self._spec is None:
                self._open(frame, scan_key)
            assert self._spec is not None
            if frame.image.shape != self._spec.frame_shape:
                raise TomoDataError(f"PVA frame {frame.unique_id} is {frame.image.shape}, the scan "
                                    f"{self._spec.run_uid} started with {self._spec.frame_shape}")
            if self._last_uid is not None and frame.unique_id > self._last_uid + 1:
                self._dropped += frame.unique_id - self._last_uid - 1
            self._last_uid = frame.unique_id
            role = self._role(frame)
            index = self._counts.get(role, 0)
            angles = None
            if role is FrameRole.PROJECTION:
                angles = np.array([self._angle(frame, index)])
            self.sink.add(FrameBatch(role, np.array([index]), frame.image[None], angles,
                                     np.array([frame.timestamp]), run_uid=self._spec.run_uid))
            self._counts[role] = index + 1
            if (role is FrameRole.PROJECTION and self._expected is not None
                    and self._counts[role] >= self._expected):
                self._end_scan(reason="all projections received")

    def _role(self, frame: NdFrame) -> FrameRole:
        if self.kind_attribute in frame.attributes:
            return frame_role(frame.attributes[self.kind_attribute])
        if self._kind_pv is not None and self._kind_pv.value is not None:
            return frame_role(self._kind_pv.value)
        return FrameRole.PROJECTION

    def _angle(self, frame: NdFrame, index: int) -> float:
        value = frame.attributes.get(self.angle_attribute)
        if value is None and self._angle_pv is not None:
            value = self._angle_pv.value
        if value is None and self.planned_angles is not None:
            start, stop, num = self.planned_angles
            value = start + (stop - start) * index / num
        if value is None:
            raise TomoDataError(
                f"projection {index} (uniqueId {frame.unique_id}) has no angle: no attribute "
                f"{self.angle_attribute!r}, no angle PV, no planned angles")
        value = float(value)
        if not np.isfinite(value):  # one bad reading must not sink the whole scan at its stop
            raise TomoDataError(f"projection {index} (uniqueId {frame.unique_id}) has angle {value}")
        return float(np.deg2rad(value)) if self.angle_units == "deg" else value

    # -- scan boundaries ------------------------------------------------------------------
    def _open(self, frame: NdFrame, scan_key: Any) -> None:
        n_proj = self.n_projections
        if n_proj is None and "num_projections" in frame.attributes:
            n_proj = int(frame.attributes["num_projections"])
        self._expected = n_proj
        self._scan_key = scan_key
        run_uid = str(scan_key) if scan_key is not None else f"pva-{uuid.uuid4()}"
        hint = frame.attributes.get("rotation_center_hint", self.metadata.get("rotation_center_hint"))
        tomo = {"version": 1, "layout": "streams", "detector": self.channel,
                "angle_units": self.angle_units, "num_projections": n_proj}
        if hint is not None:
            tomo["rotation_center_hint"] = float(hint)
        self._spec = ScanSpec(
            run_uid=run_uid, frame_shape=tuple(frame.image.shape), dtype=str(frame.image.dtype),
            detector_key=self.channel, n_projections=n_proj, angle_units=self.angle_units,
            streams={"projection": self.channel, "dark": self.channel, "flat": self.channel},
            source="pva", metadata={**self.metadata, "tomo": {**self.metadata.get("tomo", {}), **tomo},
                                    "pva_channel": self.channel, "first_unique_id": frame.unique_id})
        self._counts, self._dropped, self._last_uid = {}, 0, None
        log.info("PVA scan %s started on %s: frames %s", run_uid, self.channel, frame.image.shape)
        self.sink.open(self._spec)

    def _end_scan(self, *, reason: str, exit_status: str | None = None) -> None:
        spec, self._spec = self._spec, None
        if spec is None:
            return
        n_proj = self._counts.get(FrameRole.PROJECTION, 0)
        if exit_status is None:
            complete = self._expected is None or n_proj >= self._expected
            exit_status = "success" if complete and n_proj > 0 else "abort"
        counts = {role.value: self._counts.get(role, 0) for role in FrameRole}
        counts["dropped"] = self._dropped
        end = ScanEnd(spec.run_uid, exit_status=exit_status, reason=reason, num_frames=counts,
                      time=time.time())
        log.info("PVA scan %s ended (%s, %s): %s", spec.run_uid, exit_status, reason, counts)
        self.scans_ended.append(end)
        self.sink.close(end)
        if self.on_scan_end is not None:
            self.on_scan_end(end)

    def finish(self, *, exit_status: str | None = None, reason: str = "finished") -> None:
        """End the current scan now (a plan's end, a GUI button, a test)."""
        with self._lock:
            self._end_scan(reason=reason, exit_status=exit_status)


class NtndArrayPublisher:
    """A pvapy server that publishes frames as the areaDetector PVA plugin does (NTNDArray with
    uniqueId, timestamps and attributes): the detector side of simulations, tests and benchmarks."""

    def __init__(self, channel: str):
        pva = require("pvaccess", PVA_FEATURE)

        self._pva = pva
        self.channel = channel
        self._server = pva.PvaServer()
        self._server.addRecord(channel, pva.NtNdArray())
        self.unique_id = 0

    def publish(self, image: np.ndarray, attributes: Mapping[str, Any] | None = None,
                timestamp: float | None = None) -> int:
        """Publish one 2-D image; returns its uniqueId (1, 2, ...)."""
        pva = self._pva
        if image.ndim != 2:
            raise ValueError(f"NTNDArray images are 2-D, got shape {image.shape}")
        member = {v: k for k, v in VALUE_TYPES.items()}.get(str(image.dtype))
        if member is None:
            raise ValueError(f"dtype {image.dtype} has no NTNDArray value type")
        self.unique_id += 1
        ny, nx = image.shape
        nda = pva.NtNdArray()
        nda["uniqueId"] = self.unique_id
        nda["dimension"] = [pva.PvDimension(nx, 0, nx, 1, False), pva.PvDimension(ny, 0, ny, 1, False)]
        nda["compressedSize"] = nda["uncompressedSize"] = image.nbytes
        ts = pva.PvTimeStamp(time.time() if timestamp is None else timestamp)
        nda["timeStamp"] = ts
        nda["dataTimeStamp"] = ts
        attrs = [pva.NtAttribute("ColorMode", pva.PvInt(0))]
        for name, value in (attributes or {}).items():
            if isinstance(value, str):
                attrs.append(pva.NtAttribute(name, pva.PvString(value)))
            elif isinstance(value, (int, np.integer)):
                attrs.append(pva.NtAttribute(name, pva.PvInt(int(value))))
            else:
                attrs.append(pva.NtAttribute(name, pva.PvDouble(float(value))))
        nda["attribute"] = attrs
        nda["value"] = {member: np.ascontiguousarray(image).ravel()}
        self._server.update(self.channel, nda)
        return self.unique_id

    def stop(self) -> None:
        self._server.stop()
