"""Garbage and hostile payloads on the worker's 0MQ document input (and the preview stream)."""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time

import msgpack
import numpy as np
import pytest
from fault_world import assert_scan_not_aborted, assert_stored_or_failed_with_reason

from bluesky_tomo_hpc.settings import check_zmq_address
from bluesky_tomo_hpc.sources.zmq_documents import (
    DocumentDecodeError,
    decode_document,
    document_dispatcher,
    encode_document,
)


class _Bomb:
    """Unpickling this runs ``touch SENTINEL`` (what any pickle from the network could do)."""

    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _payloads(sentinel: str) -> dict[str, bytes]:
    bomb = pickle.dumps({"uid": "x", "payload": _Bomb(sentinel)})
    object_array = {b"nd": True, b"type": "|O", b"kind": b"O", b"shape": [1], b"data": bomb}
    return {
        "pickle bomb": bomb,
        "object array with a pickle inside": msgpack.packb({"data": object_array}, use_bin_type=True),
        "object dtype without kind": msgpack.packb(
            {"data": {b"nd": True, b"type": "|O", b"kind": b"", b"shape": [2], b"data": b"\x00" * 16}},
            use_bin_type=True),
        "structured dtype": msgpack.packb(
            {"data": {b"nd": True, b"type": [["a", "<f8"]], b"kind": b"V", b"shape": [1],
                      b"data": b"\x00" * 8}}, use_bin_type=True),
        "shape larger than data": msgpack.packb(
            {"data": {b"nd": True, b"type": "<f8", b"kind": b"", b"shape": [10**6], b"data": b"\x00" * 8}},
            use_bin_type=True),
        "truncated msgpack": encode_document({"uid": "x", "time": 1.0, "data": list(range(50))})[:-7],
        "not a mapping (int)": msgpack.packb(42),
        "not a mapping (list)": msgpack.packb([1, 2, 3]),
        "extra bytes after the document": encode_document({"uid": "x"}) + b"\xc1\xc1",
        "random bytes": np.random.default_rng(0).bytes(512),
        "empty": b"",
        "invalid utf-8 in a key": b"\x81\xa2\xff\xfe\x01",
        "deeply nested": b"\x91" * 100_000 + b"\xc0",
    }


PAYLOAD_IDS = list(_payloads("/s"))


@pytest.mark.parametrize("which", PAYLOAD_IDS)
def test_hostile_payload_is_refused_by_the_decoder(world, which):
    """A payload that is not a plain msgpack mapping is refused with DocumentDecodeError, never executed."""
    payload = _payloads(str(world.sentinel))[which]
    with pytest.raises(DocumentDecodeError) as info:
        decode_document(payload)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_documents_with_arrays_round_trip(world):
    """Real documents with NumPy arrays and scalars survive encode/decode unchanged in value."""
    doc = {"uid": "e1", "time": 1.5, "seq_num": np.int64(3),
           "data": {"img": np.arange(12, dtype=np.uint16).reshape(3, 4), "rot": np.float64(12.5)},
           "timestamps": {"img": 1.0, "rot": 1.0}, "filled": {}}
    back = decode_document(encode_document(doc))
    np.testing.assert_array_equal(back["data"]["img"], doc["data"]["img"])
    assert back["data"]["img"].dtype == np.uint16 and back["data"]["rot"] == 12.5 and back["seq_num"] == 3


def test_oversized_document_is_refused(world, monkeypatch):
    """A document larger than the limit is refused before it is unpacked."""
    import bluesky_tomo_hpc.sources.zmq_documents as zd

    monkeypatch.setattr(zd, "MAX_DOCUMENT_BYTES", 1000)
    with pytest.raises(DocumentDecodeError, match="exceeds"):
        decode_document(encode_document({"data": "x" * 2000}))


@pytest.mark.parametrize("address", ["5578", "tcp://127.0.0.1", "tcp://127.0.0.1:99999", "http://x:1",
                                     "tcp://127.0.0.1:5578; touch x", 5578, ""])
def test_bad_zmq_address_is_refused_with_the_form(world, address):
    """A 0MQ address that is not tcp://HOST:PORT (or ipc/inproc) is refused, showing the right form."""
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        check_zmq_address(address)


def _garbage_messages(sentinel: str) -> list[bytes]:
    bomb = _payloads(sentinel)["pickle bomb"]
    return [
        b"no-spaces-at-all",
        b" start " + bomb,  # bluesky's pickle default
        b" start " + _payloads(sentinel)["object array with a pickle inside"],
        b" bogus_name " + encode_document({"uid": "x"}),  # ends bluesky's own receive loop
        b" \xff\xfe " + encode_document({"uid": "x"}),
        b" start " + _payloads(sentinel)["truncated msgpack"],
        b" event " + msgpack.packb([1, 2]),
        b" stop " + b"",
        b" start " + encode_document({"uid": {"a": 1}, "time": 1.0}),  # wrong types: schema refuses
        b" start " + encode_document({"time": "yesterday"}),
        b" descriptor " + encode_document({"uid": 1, "run_start": ["x"], "data_keys": 3}),
        b" stop " + encode_document({"uid": "s", "run_start": {"x": 1}, "time": 1.0,
                                     "exit_status": "success"}),
        b" event " + encode_document({"descriptor": {"a": 1}}),
    ]


def test_dispatcher_drops_garbage_and_keeps_receiving(world):
    """Garbage messages are dropped and logged one by one; the documents after them still arrive."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    import asyncio

    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(address)
    dispatcher = document_dispatcher(address, loop=asyncio.new_event_loop())
    got: list[tuple[str, dict]] = []
    dispatcher.subscribe(lambda name, doc: got.append((name, doc)))
    thread = threading.Thread(target=lambda: _run_until_cancelled(dispatcher), daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # 0MQ slow joiner
        for message in _garbage_messages(str(world.sentinel)):
            pub.send(message)
        pub.send(b" start " + encode_document({"uid": "good", "time": 1.0}))
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dispatcher.loop.call_soon_threadsafe(dispatcher._task.cancel)
        thread.join(10)
        pub.close(linger=0)
        ctx.term()
    assert [(n, d["uid"]) for n, d in got] == [("start", "good")]
    assert dispatcher.dropped == len(_garbage_messages("/s"))


def _run_until_cancelled(dispatcher) -> None:
    import asyncio

    try:
        dispatcher.start()
    except asyncio.CancelledError:
        pass


@pytest.mark.timeout(90)
def test_worker_fed_garbage_then_a_scan_reconstructs_the_scan(module_RE, world):
    """The streaming worker survives garbage on its 0MQ input and still previews and reconstructs the scan."""
    import zmq

    from bluesky_tomo_hpc.live.stream_worker import StreamWorker
    from bluesky_tomo_hpc.settings import Settings
    from bluesky_tomo_hpc.sim import make_sim_beamline, tomo_scan

    address = f"tcp://127.0.0.1:{_free_port()}"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(address)
    settings = Settings.model_validate({
        "data_dir": str(world.data), "full_volume": True, "recon": {"circular_mask": None, "center": 15.5},
        "preview": {"png_dir": str(world.data / "previews"), "refine_center": False}})
    worker = StreamWorker(settings, client=None)
    ready = threading.Event()
    served: list[int] = []
    thread = threading.Thread(target=lambda: served.append(
        worker.serve_zmq(address, max_runs=1, timeout_s=60, ready=ready.set)), daemon=True)
    thread.start()
    stops: list[dict] = []
    try:
        assert ready.wait(30)
        time.sleep(0.5)
        for message in _garbage_messages(str(world.sentinel)):
            pub.send(message)
        bl = make_sim_beamline(world.data / "raw", shape=(16, 32))

        def publish(name: str, doc: dict) -> None:
            if name == "stop":
                stops.append(doc)
            pub.send(b" " + name.encode() + b" " + encode_document(doc))

        token = module_RE.subscribe(publish)
        try:
            module_RE(tomo_scan(bl.detector, bl.stage, num_projections=24, num_darks=2, num_flats=2,
                                exposure=0.0))
        finally:
            module_RE.unsubscribe(token)
        thread.join(60)
        assert served == [1]
        assert worker.wait(60)
    finally:
        worker.stop()
        thread.join(10)
        worker.close()
        pub.close(linger=0)
        ctx.term()
    assert_scan_not_aborted(stops)
    assert_stored_or_failed_with_reason(worker.service.outcomes)
    (outcome,) = worker.service.outcomes.values()
    assert outcome.ok, outcome.message


def _preview_garbage() -> dict[str, list[bytes]]:
    import json

    from bluesky_tomo_hpc.sinks.preview_stream import TOPIC, VERSION

    def header(**over) -> bytes:
        h = {"version": VERSION, "run_uid": "r", "seq": 1, "final": False, "time": 1.0,
             "slices": [{"plane": "xy", "dtype": "<f4", "shape": [2, 2], "index": 0}], **over}
        return json.dumps(h).encode()

    return {
        "wrong topic": [b"other", header()],
        "header not JSON": [TOPIC, b"\xff\xfe"],
        "header a list": [TOPIC, b"[1, 2]"],
        "object dtype": [TOPIC, header(slices=[{"plane": "xy", "dtype": "|O", "shape": [2], "index": 0}]),
                         b"\x00" * 16],
        "buffer too short": [TOPIC, header(), b"\x00" * 3],
        "shape not numbers": [TOPIC, header(slices=[{"plane": "xy", "dtype": "<f4", "shape": ["a"],
                                                     "index": 0}]), b""],
        "run uid not text": [TOPIC, header(run_uid={"a": 1}), b"\x00" * 16],
        "missing fields": [TOPIC, json.dumps({"version": VERSION, "slices": []}).encode()],
    }


@pytest.mark.parametrize("which", list(_preview_garbage()))
def test_preview_stream_garbage_is_refused(world, which):
    """A malformed preview message is refused with PreviewProtocolError (watch skips it and goes on)."""
    from bluesky_tomo_hpc.sinks.preview_stream import PreviewProtocolError, decode

    with pytest.raises(PreviewProtocolError):
        decode(_preview_garbage()[which])


def test_watch_skips_garbage_and_shows_the_next_update(capsys, world):
    """watch fed garbage then a real update: skips the garbage with a line each, writes the update's files."""
    import zmq

    from bluesky_tomo_hpc.cli.main import main
    from bluesky_tomo_hpc.sinks.preview_stream import PreviewPublisher, PreviewUpdate, encode

    pub = PreviewPublisher(f"tcp://127.0.0.1:{_free_port()}", hwm=100)
    planes = ("xy", "xz", "yz")
    update = PreviewUpdate(run_uid="run-1", slices={p: np.ones((4, 4), np.float32) for p in planes},
                           indices={"xy": 0, "xz": 0, "yz": 0}, seq=1, final=True, time=1.0, metadata={})

    def send() -> None:
        time.sleep(1.0)  # slow joiner
        for frames in [f for k, f in _preview_garbage().items() if k != "wrong topic"]:
            pub._sock.send_multipart(frames, flags=zmq.NOBLOCK)
        pub._sock.send_multipart(encode(update), flags=zmq.NOBLOCK)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        code = main(["watch", pub.address, "--out", str(world.data / "w"), "--until-final",
                     "--timeout", "20"])
    finally:
        sender.join(5)
        pub.close()
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count("message skipped") == len(_preview_garbage()) - 1
    assert (world.data / "w" / "run-1_xy.tif").is_file()
