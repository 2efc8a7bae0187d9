"""Moving a running scan's live slices from outside the preview's process: a small 0MQ REQ/REP
exchange, one JSON request and one JSON reply.

Why 0MQ and not a call: the web page and the preview usually run in different processes (``serve``
beside a streaming worker); the in-process session and the worker both build their previews in
:class:`~bluesky_tomo_hpc.live.scan_sinks.SinkFactory`, which answers on
``preview.control_address``. Everything received is untrusted: a message is at most
:data:`MAX_MESSAGE_BYTES` (0MQ drops a peer that sends more), JSON only (never pickle), and each
field is checked before a sink sees it::

    request  {"version": 1, "run_uid": str, "indices": {"xy": int, "xz": int, "yz": int}}
             (any subset of the three planes: xy is at row z, xz at y, yz at x, in preview voxels)
    reply    {"ok": true, "run_uid": str, "indices": {...}}  or  {"ok": false, "error": str}
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from ..settings import check_zmq_address

log = logging.getLogger(__name__)

VERSION = 1
PLANES = ("xy", "xz", "yz")
#: the largest request or reply, in bytes (a request is well under 300)
MAX_MESSAGE_BYTES = 4096
#: the largest slice index accepted on the wire (the sink then checks its own shape)
MAX_INDEX = 2**20


class ControlError(ValueError):
    """A request refused, or no answer: the message says which and why, in one line."""


def check_request(body: Any) -> tuple[str, dict[str, int]]:
    """(run uid, wanted indices) of a decoded request, or :class:`ControlError` naming the field."""
    if not isinstance(body, dict) or body.get("version") != VERSION:
        raise ControlError(f"a slice request must be a version {VERSION} JSON object")
    uid = body.get("run_uid")
    if not isinstance(uid, str) or not 0 < len(uid) <= 200 or not uid.isprintable():
        raise ControlError("run_uid must be printable text of 1 to 200 characters")
    indices = body.get("indices")
    if not isinstance(indices, dict) or not indices or set(indices) - set(PLANES):
        raise ControlError(f"indices must map some of {', '.join(PLANES)} to a slice index")
    for plane, value in indices.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INDEX:
            raise ControlError(f"the {plane} index must be a whole number from 0 to {MAX_INDEX}")
    return uid, dict(indices)


def decode_request(frames: list[bytes]) -> tuple[str, dict[str, int]]:
    if len(frames) != 1:
        raise ControlError(f"a slice request is one 0MQ frame, not {len(frames)}")
    try:
        body = json.loads(bytes(frames[0]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"a slice request must be UTF-8 JSON ({type(exc).__name__})") from None
    return check_request(body)


class PreviewControlServer:
    """A REP socket on a daemon thread: each request goes to ``move(run_uid, indices)``, which
    returns the indices the preview will move to or raises ``ValueError`` with the reason."""

    def __init__(self, address: str, move: Callable[[str, dict[str, int]], dict[str, int]]):
        import zmq

        check_zmq_address(address, bind=True, what="preview control address")
        self._sock = zmq.Context.instance().socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._sock.bind(address)
        self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.move = move
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="preview-control", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._sock.poll(250):
                    continue
                frames = self._sock.recv_multipart()
                self._sock.send(json.dumps(self.answer(frames)).encode())
                self.answered += 1
        finally:
            self._sock.close(linger=0)

    def answer(self, frames: list[bytes]) -> dict[str, Any]:
        """The reply to one request (never raises: a fault is the reply's ``error``)."""
        try:
            uid, wanted = decode_request(frames)
            return {"ok": True, "run_uid": uid, "indices": self.move(uid, wanted)}
        except ValueError as exc:
            return {"ok": False, "error": str(exc)[:500]}
        except Exception as exc:  # a bug here must not end the control thread
            log.exception("preview control request failed")
            return {"ok": False, "error": f"internal error ({type(exc).__name__})"}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def request_move(address: str, run_uid: str, indices: dict[str, int], *,
                 timeout_s: float = 10.0) -> dict[str, int]:
    """Ask the preview at ``address`` to move run ``run_uid``'s slices to ``indices``; returns the
    indices it accepted, or raises :class:`ControlError` (refused, or no answer in ``timeout_s``).
    A fresh REQ socket per request: one that timed out never blocks the next."""
    import zmq

    check_zmq_address(address, what="preview control address")
    body = {"version": VERSION, "run_uid": run_uid, "indices": indices}
    check_request(body)
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    try:
        sock.connect(address)
        sock.send(json.dumps(body).encode())
        if not sock.poll(int(timeout_s * 1000)):
            raise ControlError(f"the live preview at {address} did not answer within {timeout_s:g} s")
        try:
            reply = json.loads(sock.recv().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ControlError(f"the live preview at {address} answered something that is not JSON") from None
    finally:
        sock.close(linger=0)
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else None
        raise ControlError(str(error or "the live preview refused the request")[:500])
    moved = reply.get("indices")
    if not isinstance(moved, dict) or not all(p in PLANES and isinstance(v, int) for p, v in moved.items()):
        raise ControlError(f"the live preview at {address} answered without valid indices")
    return moved
