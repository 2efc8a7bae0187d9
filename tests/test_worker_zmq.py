"""The streaming worker fed over 0MQ: RunEngine + Publisher -> bluesky-0MQ-proxy -> worker process
(RemoteDispatcher + TomoRunRouter) -> preview over 0MQ PUB and files; and a worker killed
mid-scan that a restart rebuilds from the HDF5 file. Every process and socket is real, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zmq")

from bluesky_tomo_hpc.sinks.preview_stream import PreviewSubscriber, PreviewUpdate  # noqa: E402

BIN = Path(sys.executable).parent


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_tcp(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def proxy():
    pin, pout = free_port(), free_port()
    addr_in, addr_out = f"tcp://127.0.0.1:{pin}", f"tcp://127.0.0.1:{pout}"
    proc = subprocess.Popen([str(BIN / "bluesky-0MQ-proxy"), "--in-address", addr_in,
                             "--out-address", addr_out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_tcp(pin)
        wait_tcp(pout)
        yield addr_in, addr_out
    finally:
        proc.kill()
        proc.wait(10)


class Worker:
    """A ``bluesky-tomo-hpc worker`` process; ``start`` returns once it printed READY."""

    def __init__(self, zmq_out: str, preview: str, tmp: Path, *extra: str):
        self.argv = [sys.executable, "-m", "bluesky_tomo_hpc.cli.main", "worker", "--zmq", zmq_out,
                     "--preview-zmq", preview, "--timeout", "60", *extra]
        self.env = {**os.environ, "BLUESKY_TOMO_HPC__DATA_DIR": str(tmp)}
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=self.env)
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:
                self.lines.append(line.strip())
                if line.strip() == "READY":
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60):
            self.proc.kill()
            raise RuntimeError(f"worker not ready: {self.proc.stderr.read()[-3000:]}")
        time.sleep(0.5)  # 0MQ slow joiner: let the SUB subscription reach the proxy
        return self

    def finish(self, timeout: float = 60) -> dict:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        err = self.proc.stderr.read()
        assert rc == 0, err[-3000:]
        time.sleep(0.1)
        out = {}
        for line in self.lines:
            if line.startswith("{"):
                rec = json.loads(line)
                out.setdefault(rec["run_uid"], {}).update(rec)
        return out


class Collector:
    """Collects preview updates from the worker's PUB socket in a thread."""

    def __init__(self, address: str):
        self.updates: list[PreviewUpdate] = []
        self.sub = PreviewSubscriber(address)
        self.final = threading.Event()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            u = self.sub.recv(timeout_s=0.1)
            if u is not None:
                self.updates.append(u)
                if u.final and not u.metadata.get("refinement_pending"):
                    self.final.set()

    def close(self) -> None:
        self._stop = True
        self.thread.join(5)
        self.sub.close()


def publisher(RE, address: str):
    """The RunEngine side: bluesky's Publisher with the msgpack codec, subscribed to RE."""
    from bluesky_tomo_hpc.sources.zmq_documents import document_publisher

    pub = document_publisher(address)
    RE.subscribe(pub)
    return pub


def close_publisher(pub) -> None:
    # linger 0: messages still queued for a proxy that is gone must not block interpreter exit
    pub._context.destroy(linger=0)


def corr(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.mark.timeout(180)
def test_worker_previews_a_scan_published_over_0mq(RE, proxy, tmp_path):
    from bluesky_tomo_hpc.sim import make_sim_beamline, tomo_scan

    addr_in, addr_out = proxy
    preview_addr = f"tcp://127.0.0.1:{free_port()}"
    png_dir = tmp_path / "previews"
    worker = Worker(addr_out, preview_addr, tmp_path, "--max-runs", "1", "--no-full-volume",
                    "--png-dir", str(png_dir)).start()
    collector = Collector(preview_addr)
    bl = make_sim_beamline(tmp_path / "raw", shape=(32, 64))
    pub = publisher(RE, addr_in)
    try:
        t0 = time.monotonic()
        (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=90, num_darks=4, num_flats=4,
                              md={"tomo": {"rotation_center_hint": bl.rotation_center_px}}))
        scan_s = time.monotonic() - t0
        assert collector.final.wait(30), "no final preview"
        results = worker.finish()
    finally:
        collector.close()
        close_publisher(pub)
    final = collector.updates[-1]
    assert final.final and final.run_uid == uid
    assert any(not u.final for u in collector.updates)  # live updates came during the scan
    md = final.metadata
    assert md["n_projections_used"] == 90 and md["n_darks"] == 4 and md["n_flats"] == 4
    assert md["center"] == pytest.approx(bl.rotation_center_px) and not md["degraded"]
    # the 0/180-degree pair confirms the hint (within half a pixel): nothing recomputed
    assert md["center_check"]["done"] and md["center_check"]["recomputed"] == []
    assert abs(md["center_check"]["center"] - bl.rotation_center_px) < 0.5
    assert md["stop_to_final_s"] < 1.0
    # photon noise and 90 angles for 64 px limit any FBP to about 0.8 here (the engine's FBP of
    # the same frames gives the same slices: see test_preview_equals_the_engine_fbp)
    truth = bl.ground_truth()
    assert corr(final.slices["xy"], truth[final.indices["xy"]]) > 0.75
    assert corr(final.slices["xz"], truth[:, final.indices["xz"], :]) > 0.75
    assert corr(final.slices["yz"], truth[:, :, final.indices["yz"]]) > 0.7
    assert results[uid]["preview"]["n_projections_used"] == 90
    # files for ImageJ users (Tiled output: tests/test_worker_local.py)
    assert {p.name for p in png_dir.iterdir()} >= {f"{uid[:8]}_{p}.tif" for p in ("xy", "xz", "yz")}
    assert (png_dir / f"{uid[:8]}_preview.png").stat().st_size > 1000
    assert scan_s < 30


@pytest.mark.timeout(180)
def test_worker_killed_mid_scan_is_rebuilt_from_the_hdf5_file(RE, proxy, tmp_path):
    from bluesky_tomo_hpc.sim import make_sim_beamline, tomo_scan

    addr_in, addr_out = proxy
    preview_addr = f"tcp://127.0.0.1:{free_port()}"
    journal = tmp_path / "journal"
    args = ("--max-runs", "1", "--no-full-volume", "--journal", str(journal))
    first = Worker(addr_out, preview_addr, tmp_path, *args).start()
    collector = Collector(preview_addr)
    bl = make_sim_beamline(tmp_path / "raw", shape=(32, 64))
    pub = publisher(RE, addr_in)
    second: Worker | None = None
    state = {}
    killed = threading.Event()
    n_events = [0]

    def hold_until_killed(name: str, doc: dict) -> None:
        # the RunEngine dispatches documents synchronously: holding the 40th event here keeps the
        # scan from running ahead of a slow worker, whatever the machine's load
        if name == "event":
            n_events[0] += 1
            if n_events[0] == 40:
                killed.wait(120)

    RE.subscribe(hold_until_killed)

    def kill_and_restart() -> None:
        # kill -9 once the first worker has previewed some projections, restart on the same journal
        # generous: a worker starting on a loaded 2-core machine can take tens of seconds
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            used = [u.metadata["n_projections_used"] for u in collector.updates]
            if used and max(used) >= 10:
                break
            time.sleep(0.02)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        state["killed_at"] = max((u.metadata["n_projections_used"] for u in collector.updates), default=0)
        state["journal_files"] = [p.name for p in journal.iterdir()]
        killed.set()
        state["second"] = Worker(addr_out, preview_addr, tmp_path, *args).start()

    killer = threading.Thread(target=kill_and_restart)
    killer.start()
    try:
        (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=120, num_darks=4, num_flats=4,
                              exposure=0.05,
                              md={"tomo": {"rotation_center_hint": bl.rotation_center_px}}))
        killer.join(120)
        second = state["second"]
        assert collector.final.wait(30), "the restarted worker gave no final preview"
        results = second.finish()
    finally:
        collector.close()
        close_publisher(pub)
        for w in (first, second):
            if w is not None and w.proc.poll() is None:
                w.proc.kill()
    assert n_events[0] > 40 and killed.is_set()  # the scan was held at event 40 until the kill
    assert state["journal_files"] == [f"{uid}.jsonl"]
    assert 10 <= state["killed_at"] < 120
    final = collector.updates[-1]
    assert final.final and final.run_uid == uid
    # every projection is in the final, including those taken while no worker listened
    assert final.metadata["n_projections_used"] == 120
    assert results[uid]["preview"]["n_projections_used"] == 120
    truth = bl.ground_truth()
    assert corr(final.slices["xy"], truth[final.indices["xy"]]) > 0.75
    assert not list(journal.iterdir())  # the journal of a finished run is removed
