"""Preview wire format (JSON header + raw buffers) and a real 0MQ PUB/SUB pair on 127.0.0.1."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from bluesky_tomo_hpc.sinks.preview_stream import (
    TOPIC,
    PreviewProtocolError,
    PreviewPublisher,
    PreviewSubscriber,
    PreviewUpdate,
    decode,
    encode,
)


def make_update(seq: int = 3, final: bool = False) -> PreviewUpdate:
    rng = np.random.default_rng(seq)
    return PreviewUpdate(
        run_uid="abc", seq=seq, final=final,
        slices={"xy": rng.random((8, 8), dtype=np.float32), "xz": rng.random((4, 8), dtype=np.float32),
                "yz": rng.random((4, 8), dtype=np.float32)},
        indices={"xy": 2, "xz": 4, "yz": 5}, metadata={"binning": 2, "center": np.float64(3.5)})


def test_round_trip_keeps_arrays_indices_and_metadata():
    u = make_update()
    frames = encode(u)
    assert frames[0] == TOPIC and len(frames) == 5
    header = json.loads(frames[1])
    assert [s["plane"] for s in header["slices"]] == ["xy", "xz", "yz"]
    assert header["slices"][1] == {"plane": "xz", "index": 4, "shape": [4, 8], "dtype": "<f4"}
    back = decode([bytes(f) for f in frames])
    for plane in ("xy", "xz", "yz"):
        np.testing.assert_array_equal(back.slices[plane], u.slices[plane])
    assert back.indices == u.indices and back.run_uid == "abc" and back.seq == 3
    assert back.metadata == {"binning": 2, "center": 3.5}


@pytest.mark.parametrize("mangle, message", [
    (lambda f: [b"other"] + f[1:], "not a preview message"),
    (lambda f: f[:2] + f[3:], "lists 3 slices but 2 buffers"),
    (lambda f: f[:2] + [bytes(f[2])[:-4]] + f[3:], "buffer has 252 bytes"),
    (lambda f: [f[0], b"\xff{"] + f[2:], "not UTF-8 JSON"),
    (lambda f: [f[0], json.dumps({**json.loads(f[1]), "version": 9}).encode()] + f[2:], "version 9"),
])
def test_malformed_messages_are_refused_with_a_reason(mangle, message):
    frames = [bytes(f) for f in encode(make_update())]
    with pytest.raises(PreviewProtocolError, match=message):
        decode(mangle(frames))


def test_bare_port_is_refused():
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        PreviewPublisher("5600")


def test_pub_sub_over_loopback_delivers_updates_and_never_blocks():
    pub = PreviewPublisher("tcp://127.0.0.1:*")
    assert pub.address.startswith("tcp://127.0.0.1:")
    sub = PreviewSubscriber(pub.address)
    try:
        got = None
        deadline = time.monotonic() + 10
        while got is None and time.monotonic() < deadline:  # slow joiner: repeat until it arrives
            pub(make_update(seq=1))
            got = sub.recv(timeout_s=0.1)
        assert got is not None and got.seq == 1
        t0 = time.perf_counter()
        for i in range(200):  # nobody reads: the publisher drops at its high-water mark
            pub(make_update(seq=i, final=(i == 199)))
        assert time.perf_counter() - t0 < 2.0
        assert sub.recv(timeout_s=2) is not None
    finally:
        sub.close()
        pub.close()
    lonely = PreviewSubscriber("tcp://127.0.0.1:1")  # nobody publishes there
    try:
        assert lonely.recv(timeout_s=0.05) is None
    finally:
        lonely.close()
