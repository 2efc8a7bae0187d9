"""PV Access source: NTNDArray decoding and scan boundaries (real pvapy objects), and the worker
fed by a real pvapy server process over loopback, its preview read back over 0MQ."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pva = pytest.importorskip("pvaccess")

from bluesky_tomo_hpc.model import FrameRole, TomoDataError  # noqa: E402
from bluesky_tomo_hpc.sources.pva import PvaSource, decode_ntndarray, frame_role  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def ntnd(uid: int, image: np.ndarray, **attrs) -> pva.NtNdArray:
    """An NTNDArray as the areaDetector PVA plugin sends it."""
    nda = pva.NtNdArray()
    nda["uniqueId"] = uid
    ny, nx = image.shape
    nda["dimension"] = [pva.PvDimension(nx, 0, nx, 1, False), pva.PvDimension(ny, 0, ny, 1, False)]
    nda["timeStamp"] = pva.PvTimeStamp(1.7e9 + uid)
    out = []
    for k, v in attrs.items():
        if isinstance(v, str):
            pv = pva.PvString(v)
        else:
            pv = pva.PvInt(v) if isinstance(v, int) else pva.PvDouble(v)
        out.append(pva.NtAttribute(k, pv))
    nda["attribute"] = out
    nda["value"] = {"ushortValue": image.astype(np.uint16).ravel()}
    return nda


class Recorder:
    """A sink that keeps what it is given (the source's output under test)."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []

    def open(self, spec):
        self.calls.append(("open", spec))

    def add(self, batch):
        self.calls.append(("add", batch))

    def close(self, end):
        self.calls.append(("close", end))

    def of(self, kind):
        return [x for k, x in self.calls if k == kind]


def test_decode_gives_image_rows_by_columns_with_attributes():
    img = np.arange(12, dtype=np.uint16).reshape(3, 4)
    f = decode_ntndarray(ntnd(7, img, rotation_angle=1.5, frame_type="dark"))
    np.testing.assert_array_equal(f.image, img)
    assert f.unique_id == 7 and f.timestamp == pytest.approx(1.7e9 + 7)
    assert f.attributes == {"rotation_angle": 1.5, "frame_type": "dark"}
    assert decode_ntndarray(pva.NtNdArray()) is None  # a record's initial, empty value


@pytest.mark.parametrize("value, role", [("dark", FrameRole.DARK), ("Flat", FrameRole.FLAT),
                                         ("white", FrameRole.FLAT), ("projection", FrameRole.PROJECTION),
                                         (0, FrameRole.PROJECTION), (1, FrameRole.FLAT), (2, FrameRole.DARK),
                                         ("2", FrameRole.DARK)])
def test_frame_kinds_by_name_or_nexus_image_key(value, role):
    assert frame_role(value) is role


def test_unknown_frame_kind_is_an_error_naming_it():
    with pytest.raises(TomoDataError, match="'sample'"):
        frame_role("sample")


def test_scan_boundaries_angles_and_dropped_frames():
    rec = Recorder()
    src = PvaSource(rec, "x", n_projections=3, idle_timeout_s=None, metadata={"sample": "s1"})
    img = np.ones((4, 6), np.uint16)
    src.on_frame(ntnd(1, img, frame_type="dark", scan_uid="A"))
    src.on_frame(ntnd(2, img, frame_type="flat", scan_uid="A"))
    src.on_frame(ntnd(3, img, frame_type="projection", rotation_angle=0.0, scan_uid="A"))
    src.on_frame(ntnd(6, img, frame_type="projection", rotation_angle=90.0, scan_uid="A"))  # 2 dropped
    src.on_frame(ntnd(7, img, frame_type="projection", rotation_angle=120.0, scan_uid="A"))
    (spec,) = rec.of("open")
    assert spec.run_uid == "A" and spec.frame_shape == (4, 6) and spec.source == "pva"
    assert spec.metadata["sample"] == "s1" and spec.n_projections == 3
    adds = rec.of("add")
    assert [b.role for b in adds] == [FrameRole.DARK, FrameRole.FLAT] + [FrameRole.PROJECTION] * 3
    assert [int(b.indices[0]) for b in adds[2:]] == [0, 1, 2]
    np.testing.assert_allclose([b.angles[0] for b in adds[2:]], np.deg2rad([0, 90, 120]))
    (end,) = rec.of("close")
    assert end.exit_status == "success" and end.reason == "all projections received"
    assert end.num_frames == {"dark": 1, "flat": 1, "projection": 3, "dropped": 2}


def test_new_scan_uid_ends_the_previous_scan_as_incomplete_and_planned_angles_fill_in():
    rec = Recorder()
    src = PvaSource(rec, "x", idle_timeout_s=None, planned_angles=(0.0, 180.0, 4))
    img = np.ones((2, 5), np.uint16)
    src.on_frame(ntnd(1, img, scan_uid="A", num_projections=4))
    src.on_frame(ntnd(2, img, scan_uid="B", num_projections=4))
    src.on_frame(ntnd(3, img, scan_uid="B", num_projections=4))
    ends = rec.of("close")
    assert [e.run_uid for e in ends] == ["A"] and ends[0].exit_status == "abort"
    assert ends[0].reason == "next scan started"
    adds = [b for b in rec.of("add") if b.run_uid == "B"]
    np.testing.assert_allclose([b.angles[0] for b in adds], np.deg2rad([0.0, 45.0]))
    src.finish()
    assert rec.of("close")[-1].run_uid == "B" and rec.of("close")[-1].exit_status == "abort"


def test_idle_timeout_ends_a_scan_and_bad_frames_are_counted_not_raised():
    rec = Recorder()
    src = PvaSource(rec, "x", idle_timeout_s=0.3, angle_attribute="theta")
    src._stop.clear()
    watchdog = threading.Thread(target=src._watch_idle, daemon=True)
    watchdog.start()
    img = np.ones((2, 5), np.uint16)
    src.on_frame(ntnd(1, img, theta=10.0))
    src.on_frame(ntnd(2, img))  # no angle: refused with a reason
    src.on_frame(ntnd(3, np.ones((3, 5), np.uint16), theta=11.0))  # other shape: refused
    deadline = time.monotonic() + 5
    while not rec.of("close") and time.monotonic() < deadline:
        time.sleep(0.05)
    src._stop.set()
    (end,) = rec.of("close")
    assert end.reason.startswith("no frame for") and end.exit_status == "success"
    assert len(src.errors) == 2
    assert "no angle" in src.errors[0] and "(3, 5)" in src.errors[1]


# -- a real pvapy server process and the worker process ------------------------------------
def free_port(kind=socket.SOCK_STREAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def loopback_env(tcp: int, udp: int) -> dict[str, str]:
    return {**os.environ,
            "EPICS_PVA_AUTO_ADDR_LIST": "NO", "EPICS_PVA_ADDR_LIST": "127.0.0.1",
            "EPICS_PVA_BROADCAST_PORT": str(udp), "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
            "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO", "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1",
            "EPICS_PVAS_BROADCAST_PORT": str(udp), "EPICS_PVA_SERVER_PORT": str(tcp),
            "EPICS_PVAS_SERVER_PORT": str(tcp), "EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_CA_ADDR_LIST": "127.0.0.1"}


class Lines:
    """Reads a process's stdout in a thread; ``wait`` for a line that starts with a prefix
    (log lines may come in between)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line.strip())
                self._cond.notify_all()

    def wait(self, prefix: str, timeout: float) -> str:
        with self._cond:
            ok = self._cond.wait_for(lambda: any(x.startswith(prefix) for x in self.lines), timeout)
        if not ok:
            raise TimeoutError(f"no line starting {prefix!r} in {timeout} s: {self.lines[-5:]}")
        return next(x for x in self.lines if x.startswith(prefix))


@pytest.mark.pva
def test_worker_previews_a_scan_streamed_as_ntndarray_frames(tmp_path):
    from bluesky_tomo_hpc.engine.projector import ellipse_image
    from bluesky_tomo_hpc.sinks.preview_stream import PreviewSubscriber

    env = loopback_env(free_port(), free_port(socket.SOCK_DGRAM))
    channel = f"test:{os.getpid()}:image"
    server = subprocess.Popen([sys.executable, str(ROOT / "callbacks" / "pva_sim_detector.py"),
                               "--channel", channel, "--nx", "64", "--ny", "16", "--angles", "90",
                               "--center", "33.5"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    worker = None
    preview_addr = f"tcp://127.0.0.1:{free_port()}"
    sub = PreviewSubscriber(preview_addr)
    try:
        server_out = Lines(server)
        server_out.wait("READY", 60)
        worker = subprocess.Popen(
            [sys.executable, "-m", "bluesky_tomo_hpc.cli.main", "worker", "--pva", channel,
             "--preview-zmq", preview_addr, "--no-full-volume", "--max-runs", "1", "--timeout", "60",
             "--png-dir", str(tmp_path / "png")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        worker_out = Lines(worker)
        worker_out.wait("READY", 60)
        time.sleep(0.5)  # 0MQ slow joiner for the preview subscriber
        server.stdin.write("GO\n")
        server.stdin.flush()
        done = json.loads(server_out.wait("DONE", 60).split(" ", 1)[1])
        assert done["published"] == 98
        updates = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (updates and updates[-1].final):
            u = sub.recv(timeout_s=0.5)
            if u is not None:
                updates.append(u)
        assert worker.wait(60) == 0, worker.stderr.read()[-3000:]
        summary = json.loads(worker_out.wait("{", 10))
    finally:
        sub.close()
        for proc in (server, worker):
            if proc is not None and proc.poll() is None:
                if proc is server:
                    server.stdin.write("QUIT\n")
                    server.stdin.flush()
                    server.wait(10)
                else:
                    proc.kill()
    final = updates[-1]
    assert final.final and final.run_uid == "pva-sim-scan" == summary["run_uid"]
    md = final.metadata
    assert md["n_projections_used"] == 90 and md["n_darks"] == 4 and md["n_flats"] == 4
    assert md["center"] == 33.5 and md["center_source"] == "rotation_center_hint"
    truth = ellipse_image(64, supersample=4) * 0.02
    y, x = np.mgrid[:64, :64] - 31.5
    m = np.hypot(x, y) < 25.6
    assert np.corrcoef(final.slices["xy"][m], truth[m])[0, 1] > 0.9
    assert (tmp_path / "png" / "pva-sim-_preview.png").exists()
