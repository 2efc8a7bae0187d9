"""Wire format of the live preview on 0MQ PUB/SUB: a JSON header and raw arrays.

One message per preview update, as a 0MQ multipart message::

    frame 0  topic            b"tomo.preview"  (SUB sockets filter on it)
    frame 1  header           UTF-8 JSON, see below
    frame 2+ one raw buffer per slice, C order, in the order of header["slices"]

Header (version 1)::

    {"version": 1, "run_uid": str, "seq": int, "final": bool, "time": float (epoch s),
     "slices": [{"plane": "xy"|"xz"|"yz", "index": int, "shape": [rows, cols], "dtype": "<f4"}, ...],
     "metadata": {... what the preview says about itself: centre, binning, projections used and
                  skipped, degraded, units ...}}

Scan health travels on the same socket as its own message (topic ``b"tomo.health"``), after every
batch of frames (without its timeline) and at the end, independent of the preview's cadence::

    frame 0  topic            b"tomo.health"
    frame 1  UTF-8 JSON       {"version": 1, "run_uid": str, "final": bool, "time": float,
                               "scan_health": {... engine.scan_health.ScanHealth.summary() ...}}

Plain JSON + raw buffers so that any language (ImageJ plugins, a web page) can read it without
pickle, and so that a reader never executes what it receives.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..settings import check_zmq_address

TOPIC = b"tomo.preview"
HEALTH_TOPIC = b"tomo.health"
VERSION = 1
PLANES = ("xy", "xz", "yz")


class PreviewProtocolError(ValueError):
    """A message that does not follow the preview wire format (the message says what is wrong)."""


@dataclass
class PreviewUpdate:
    """Three orthogonal slices of one run at one moment of the scan."""

    run_uid: str
    slices: dict[str, np.ndarray]
    indices: dict[str, int]
    seq: int = 0
    final: bool = False
    time: float = field(default_factory=time.time)
    metadata: dict[str, Any] = field(default_factory=dict)


def encode(update: PreviewUpdate) -> list[bytes]:
    """The multipart frames of ``update`` (arrays go as float32, C order)."""
    arrays = []
    descr = []
    for plane in PLANES:
        if plane not in update.slices:
            continue
        a = np.ascontiguousarray(update.slices[plane], dtype="<f4")
        if a.ndim != 2:
            raise PreviewProtocolError(f"preview slice {plane!r} must be 2-D, got shape {a.shape}")
        arrays.append(a)
        descr.append({"plane": plane, "index": int(update.indices.get(plane, -1)),
                      "shape": list(a.shape), "dtype": a.dtype.str})
    header = {"version": VERSION, "run_uid": update.run_uid, "seq": int(update.seq),
              "final": bool(update.final), "time": float(update.time), "slices": descr,
              "metadata": update.metadata}
    return [TOPIC, json.dumps(header, default=_json_default).encode()] + [a.data for a in arrays]


def decode(frames: list[bytes]) -> PreviewUpdate:
    """Inverse of :func:`encode`; checks the topic, version, and every buffer's size."""
    if len(frames) < 2 or bytes(frames[0]) != TOPIC:
        raise PreviewProtocolError(f"not a preview message: expected topic {TOPIC!r} and a header")
    try:
        header = json.loads(bytes(frames[1]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PreviewProtocolError(f"preview header is not UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise PreviewProtocolError(f"preview header must be a JSON object, not {type(header).__name__}")
    if header.get("version") != VERSION:
        raise PreviewProtocolError(f"preview header version {header.get('version')!r}, expected {VERSION}")
    try:
        return _update_from(header, frames[2:])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a hostile or broken sender
        raise PreviewProtocolError(f"malformed preview message: {type(exc).__name__}: {exc}"[:300]) from exc


def _update_from(header: Any, buffers: list[bytes]) -> PreviewUpdate:
    descr = header.get("slices", [])
    if len(buffers) != len(descr):
        raise PreviewProtocolError(f"header lists {len(descr)} slices but {len(buffers)} buffers came")
    if not isinstance(header["run_uid"], str):
        raise PreviewProtocolError(f"run_uid must be text, not {type(header['run_uid']).__name__}")
    slices, indices = {}, {}
    for d, buf in zip(descr, buffers, strict=True):
        dtype = np.dtype(d["dtype"])
        if dtype.hasobject:
            raise PreviewProtocolError(f"slice dtype {dtype} refused (object arrays could hold code)")
        shape = tuple(int(n) for n in d["shape"])
        expected = int(np.prod(shape)) * dtype.itemsize
        if len(buf) != expected:
            raise PreviewProtocolError(
                f"slice {d['plane']!r}: buffer has {len(buf)} bytes, shape {shape} {dtype} needs {expected}")
        slices[str(d["plane"])] = np.frombuffer(buf, dtype=dtype).reshape(shape)
        indices[str(d["plane"])] = int(d["index"])
    return PreviewUpdate(run_uid=header["run_uid"], slices=slices, indices=indices, seq=int(header["seq"]),
                         final=bool(header["final"]), time=float(header["time"]),
                         metadata=dict(header.get("metadata", {})))


def encode_health(update: Any) -> list[bytes]:
    """The frames of a scan-health message (``update``: a ``HealthUpdate``)."""
    body = {"version": VERSION, "run_uid": update.run_uid, "final": bool(update.final),
            "time": float(update.time), "scan_health": update.summary}
    return [HEALTH_TOPIC, json.dumps(body, default=_json_default).encode()]


def decode_health(frames: list[bytes]) -> tuple[str, dict[str, Any], bool]:
    """(run uid, scan-health summary, final) of a health message; checked like :func:`decode`."""
    if len(frames) != 2 or bytes(frames[0]) != HEALTH_TOPIC:
        raise PreviewProtocolError(f"not a health message: expected topic {HEALTH_TOPIC!r} and one body")
    try:
        body = json.loads(bytes(frames[1]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PreviewProtocolError(f"health message is not UTF-8 JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("version") != VERSION:
        raise PreviewProtocolError(f"health message must be a version {VERSION} JSON object")
    uid, summary = body.get("run_uid"), body.get("scan_health")
    if not isinstance(uid, str) or not isinstance(summary, dict):
        raise PreviewProtocolError("health message needs a text run_uid and a scan_health object")
    return uid, summary, bool(body.get("final"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


class PreviewPublisher:
    """A PUB socket that never blocks its caller: a slow or absent viewer loses old updates
    (0MQ drops at the high-water mark), the reconstruction never waits."""

    def __init__(self, address: str, *, bind: bool = True, hwm: int = 4):
        import zmq

        check_zmq_address(address, bind=bind, what="preview address")
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        (self._sock.bind if bind else self._sock.connect)(address)
        self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind else address
        self.sent = 0
        self._lock = threading.Lock()  # previews and health come from different threads

    def __call__(self, update: PreviewUpdate) -> None:
        self._send(encode(update))

    def publish_health(self, update: Any) -> None:
        """A scan-health update (``sinks.scan_health_sink.HealthUpdate``) on the same socket."""
        self._send(encode_health(update))

    def _send(self, frames: list[Any]) -> None:
        import zmq

        with self._lock:
            try:
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                self.sent += 1
            except zmq.Again:  # no room: this update is dropped for that subscriber, never waited for
                pass

    def close(self) -> None:
        self._sock.close(linger=0)


class PreviewSubscriber:
    """SUB side, for ``bluesky-tomo-hpc watch`` and tests."""

    def __init__(self, address: str, *, bind: bool = False, health: bool = False):
        import zmq

        check_zmq_address(address, bind=bind, what="preview address")
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
        if health:  # recv_any() then returns health messages too
            self._sock.setsockopt(zmq.SUBSCRIBE, HEALTH_TOPIC)
        (self._sock.bind if bind else self._sock.connect)(address)

    def recv(self, timeout_s: float | None = None) -> PreviewUpdate | None:
        """The next update, or None when none came within ``timeout_s``."""
        if timeout_s is not None and not self._sock.poll(int(timeout_s * 1000)):
            return None
        return decode(self._sock.recv_multipart())

    def recv_any(self, timeout_s: float | None = None
                 ) -> PreviewUpdate | tuple[str, dict[str, Any], bool] | None:
        """The next preview update or health message (``decode_health``'s tuple), or None."""
        if timeout_s is not None and not self._sock.poll(int(timeout_s * 1000)):
            return None
        frames = self._sock.recv_multipart()
        return decode_health(frames) if frames and bytes(frames[0]) == HEALTH_TOPIC else decode(frames)

    def close(self) -> None:
        self._sock.close(linger=0)



