#!/usr/bin/env python3
"""Live preview at ALS frame sizes, end to end through the real transports (issue 9).

Two feeds of the same 2160 x 2560 uint16 frames at --fps (11 = ALS), each into a real
``bluesky-tomo-hpc worker`` process that publishes its preview over 0MQ to a subscriber process
which timestamps every update it receives:

  zmq: RunEngine + ophyd v1 simulated detector writing each frame into HDF5 (SWMR, Resource /
       Datum) -> bluesky 0MQ ``Publisher`` (msgpack documents) -> ``bluesky-0MQ-proxy`` ->
       worker (preview + full volume into a real Tiled server process) -> 0MQ preview ->
       subscriber.
  pva: ``callbacks/pva_sim_detector.py`` (a pvapy NTNDArray server) -> worker --pva -> ... .

Frames: --distinct projections are computed once and cycled over the scan's angles (the
simulator is not what is measured); darks and flats are real frames of the same physics.

Reported per feed: frames written/published and their rate, frames the preview skipped,
frame-written -> preview-received latency of the newest frame in each live update (median,
p95), stop -> first final preview and -> settled final (after the centre check), stop -> full
volume outcome from the worker (written into Tiled), and the peak RSS (VmHWM, sampled) of every
process. The stop time is the stop document's time (zmq) or the last frame's publish time (pva).

Full volume (issue 24): ``--volume-mode streaming`` (the default: frames binned as they arrive,
blocks of angles summed during the scan, :mod:`bluesky_tomo_hpc.sinks.streaming_volume`) or
``at-stop`` (the scan re-read after the stop); ``--volume-mode streaming at-stop`` runs both, one
after the other, on the same feed and prints the ratio. Per run: stop -> full volume in Tiled
(``stop_to_volume_in_tiled_s``: the node seen by polling the server every POLL_S; the streamed
volume's TIFFs are written after it), stop -> the worker's full-volume line (``stop_to_full_volume_s``:
after every follow-up, TIFFs included), how it was made (summed or why not), and the timeline of
the partial volumes in Tiled (seconds after the first projection, projections in each).

    python benchmarks/bench_stream_e2e.py --frames 300 --json e2e.json
    python benchmarks/bench_stream_e2e.py --mode zmq --frames 1969 --volume-binning 4
    python benchmarks/bench_stream_e2e.py --frames 1969 --volume-mode streaming at-stop --json e2e.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NY, NX = 2160, 2560
#: the rotation axis of both simulated feeds (make_sim_beamline's default offset of 3.5 px)
CENTER = (NX - 1) / 2.0 + 3.5
#: how often the Tiled server is polled for partial volumes and the full one (s)
POLL_S = 0.5


# -- plumbing ----------------------------------------------------------------------------------
def free_port(kind: int = socket.SOCK_STREAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_tcp(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def loopback_env(tcp: int, udp: int) -> dict[str, str]:
    return {"EPICS_PVA_AUTO_ADDR_LIST": "NO", "EPICS_PVA_ADDR_LIST": "127.0.0.1",
            "EPICS_PVA_BROADCAST_PORT": str(udp), "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
            "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO", "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1",
            "EPICS_PVAS_BROADCAST_PORT": str(udp), "EPICS_PVA_SERVER_PORT": str(tcp),
            "EPICS_PVAS_SERVER_PORT": str(tcp), "EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_CA_ADDR_LIST": "127.0.0.1"}


class Proc:
    """A child process whose stdout lines are kept with their arrival time (time.time())."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 stdin: bool = False, log_dir: Path | None = None):
        self.name = name
        err = open(log_dir / f"{name}.stderr", "w") if log_dir else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True,
                                     stdin=subprocess.PIPE if stdin else None,
                                     env={**os.environ, **(env or {})})
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append((time.time(), line.rstrip("\n")))
                self._cond.notify_all()

    def wait_line(self, prefix: str, timeout: float) -> tuple[float, str]:
        def found():
            return next(((t, x) for t, x in self.lines if x.startswith(prefix)), None)

        with self._cond:
            self._cond.wait_for(lambda: found() is not None or self.proc.poll() is not None, timeout)
            hit = found()
        if hit is None:
            raise TimeoutError(f"{self.name}: no line starting {prefix!r} in {timeout} s "
                               f"(exit {self.proc.poll()}): {[x for _, x in self.lines[-5:]]}")
        return hit

    def send(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        """Terminate, then kill; never raises (every process of the run must go)."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(10)
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except Exception:
                pass


class PeakRss:
    """Samples VmHWM (peak resident set) of named pids every 0.2 s until stopped."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def watch(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def _sample(self) -> None:
        for name, pid in list(self.pids.items()):
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            kb = int(line.split()[1])
                            self.peak[name] = max(self.peak.get(name, 0), kb * 1024)
            except OSError:
                pass

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def stop(self) -> dict[str, float]:
        self._sample()
        self._stop.set()
        return {k: round(v / 2**30, 2) for k, v in self.peak.items()}


# -- the preview subscriber (a child process of this script) ------------------------------------
def subscriber_main(address: str, record: str, timeout: float) -> int:
    """Receive preview updates and append one JSON line per update (receive time first)."""
    from bluesky_tomo_hpc.sinks.preview_stream import PreviewSubscriber

    sub = PreviewSubscriber(address)
    print("READY", flush=True)
    deadline = time.monotonic() + timeout
    with open(record, "w") as f:
        while time.monotonic() < deadline:
            u = sub.recv(timeout_s=0.2)
            if u is None:
                continue
            t = time.time()
            md = u.metadata
            f.write(json.dumps({"t": t, "seq": u.seq, "final": u.final, "uid": u.run_uid,
                                "pending": bool(md.get("refinement_pending")),
                                "used": md.get("n_projections_used"),
                                "skipped": md.get("n_projections_skipped"),
                                "stop_to_final_s": md.get("stop_to_final_s")}) + "\n")
            f.flush()
            if u.final and not md.get("refinement_pending"):
                break
    sub.close()
    return 0


# -- the two feeds -------------------------------------------------------------------------------
def start_common(work: Path, binning: int, volume_binning: int, rss: PeakRss, feed: list[str],
                 env: dict[str, str], timeout: float,
                 streaming: bool = True, center: str = "auto") -> tuple[Proc, Proc, Proc, Path]:
    """Tiled server, subscriber and worker processes; returns them and the subscriber's record."""
    tiled = Proc("tiled", [sys.executable, "-c", (
        "import json, sys, time\n"
        "from tiled.server import SimpleTiledServer\n"
        "s = SimpleTiledServer(sys.argv[1], readable_storage=[sys.argv[2]])\n"
        "print('TILED ' + json.dumps({'uri': s.uri, 'api_key': s.api_key}), flush=True)\n"
        "time.sleep(1e6)\n"), str(work / "tiled"), str(work)], log_dir=work)
    info = json.loads(tiled.wait_line("TILED ", 300)[1].split(" ", 1)[1])  # minutes on a busy host
    rss.watch("tiled server", tiled.proc.pid)
    preview = f"tcp://127.0.0.1:{free_port()}"
    record = work / "previews.jsonl"
    sub = Proc("subscriber", [sys.executable, __file__, "--subscribe", preview, "--record", str(record),
                              "--timeout", str(timeout)], log_dir=work)
    sub.wait_line("READY", 60)
    rss.watch("preview subscriber", sub.proc.pid)
    wenv = {**env, "BLUESKY_TOMO_HPC__DATA_DIR": str(work / "data"), "TILED_API_KEY": info["api_key"],
            "BLUESKY_TOMO_HPC__RECON__BINNING": str(volume_binning),
            "BLUESKY_TOMO_HPC__FULL_VOLUME_STREAMING": "true" if streaming else "false",
            **({"BLUESKY_TOMO_HPC__RECON__CENTER": str(CENTER)} if center == "given" else {})}
    tiled_uri = info["uri"].split("?")[0]  # the key travels in TILED_API_KEY
    worker = Proc("worker", [sys.executable, "-m", "bluesky_tomo_hpc.cli.main", "worker", *feed,
                             "--preview-zmq", preview, "--binning", str(binning), "--tiled-uri", tiled_uri,
                             "--max-runs", "1", "--timeout", str(timeout)], env=wenv, log_dir=work)
    worker.wait_line("READY", 120)
    rss.watch("worker", worker.proc.pid)
    time.sleep(1.0)  # 0MQ slow joiner: subscriptions reach the publishers
    PartialPoll(info["uri"].split("?")[0], info["api_key"], work / "partials.jsonl")
    return tiled, sub, worker, record


class PartialPoll:
    """Polls the Tiled server every POLL_S for partial volumes (kind ``partial``) and appends
    ``{"t", "n_projections_used"}`` to ``record`` whenever the count changes, and ``{"t", "kind":
    "full"}`` when the full volume appears (a daemon thread): the time the volume is in Tiled,
    before the worker's TIFFs and exit."""

    def __init__(self, uri: str, api_key: str, record: Path):
        self.uri, self.api_key, self.record = uri, api_key, record
        record.write_text("")
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        from tiled.client import from_uri
        from tiled.queries import Key

        seen: set[int] = set()
        client, full = None, False
        while True:
            time.sleep(POLL_S)
            try:
                client = client or from_uri(self.uri, api_key=self.api_key)
                if "processed" not in client:
                    continue
                if not full and len(client["processed"].search(Key("kind") == "full")):
                    full = True
                    with open(self.record, "a") as f:
                        f.write(json.dumps({"t": time.time(), "kind": "full"}) + "\n")
                for _, node in client["processed"].search(Key("kind") == "partial").items():
                    m = int(node.metadata.get("n_projections_used") or 0)
                    if m not in seen:
                        seen.add(m)
                        with open(self.record, "a") as f:
                            f.write(json.dumps({"t": time.time(), "n_projections_used": m}) + "\n")
            except Exception:  # the server is starting or stopping: try again next second
                client = None


def run_zmq(work: Path, a: argparse.Namespace) -> dict:
    from bluesky import RunEngine

    from bluesky_tomo_hpc.sim import hdf5_writer, make_sim_beamline, tomo_scan
    from bluesky_tomo_hpc.sources.zmq_documents import document_publisher

    rss = PeakRss()
    rss.watch("RunEngine + detector (this process)", os.getpid())
    pin, pout = free_port(), free_port()
    proxy = Proc("proxy", [str(BIN / "bluesky-0MQ-proxy"), "--in-address", f"tcp://127.0.0.1:{pin}",
                           "--out-address", f"tcp://127.0.0.1:{pout}"], log_dir=work)
    wait_tcp(pin)
    wait_tcp(pout)
    rss.watch("0MQ proxy", proxy.proc.pid)
    procs = [proxy]
    try:
        tiled, sub, worker, record = start_common(
            work, a.binning, a.volume_binning, rss, ["--zmq", f"tcp://127.0.0.1:{pout}"], {}, a.timeout,
            streaming=a.streaming, center=a.volume_center)
        procs += [tiled, sub, worker]
        RE = RunEngine({})
        # connect the publisher first: 0MQ drops what a PUB socket sends before its connection
        # to the proxy is up (the start document would be lost)
        pub = document_publisher(f"tcp://127.0.0.1:{pin}")  # msgpack, as the worker expects
        RE.subscribe(pub)
        bl = make_sim_beamline(work / "raw", flavour="ophyd_v1", shape=(NY, NX), external_files=True)
        t0 = time.perf_counter()
        angles = np.linspace(0, 180, a.distinct, endpoint=False)
        cached = [bl.simulator.acquire(angle_deg=float(x), shutter_open=True, sample_in=True) for x in angles]
        dark = bl.simulator.acquire(angle_deg=0.0, shutter_open=False, sample_in=False)
        flat = bl.simulator.acquire(angle_deg=0.0, shutter_open=True, sample_in=False)
        print(f"  {a.distinct} distinct frames computed in {time.perf_counter() - t0:.1f} s", flush=True)
        written: list[tuple[bool, float]] = []
        state = {"k": 0, "t0": None, "projection": False}

        def paced(*, angle_deg: float, shutter_open: bool, sample_in: bool) -> np.ndarray:
            if state["t0"] is None:
                state["t0"] = time.perf_counter()
            delay = state["t0"] + state["k"] / a.fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            state["k"] += 1
            state["projection"] = shutter_open and sample_in
            if not shutter_open:
                return dark
            if not sample_in:
                return flat
            return cached[(state["k"] - 1) % len(cached)]

        bl.simulator.acquire = paced
        original = hdf5_writer.FrameFile.append

        def timed_append(self, frame, angle_deg):
            n = original(self, frame, angle_deg)
            written.append((state["projection"], time.time()))
            return n

        hdf5_writer.FrameFile.append = timed_append
        time.sleep(1.0)
        stop_time: dict[str, float] = {}
        RE.subscribe(lambda name, doc: stop_time.setdefault("t", time.time()) if name == "stop" else None)
        (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=a.frames, num_darks=a.darks,
                              num_flats=a.flats, exposure=0.0,
                              md={"tomo": {"rotation_center_hint": bl.rotation_center_px}}))
        hdf5_writer.FrameFile.append = original
        proj_times = [t for is_proj, t in written if is_proj]
        result = finish(worker, sub, record, proj_times, stop_time["t"], a)
        pub._context.destroy(linger=0)
    finally:
        peaks = rss.stop()
        for p in reversed(procs):
            p.stop()
    result["peak_rss_gib"] = peaks
    result["feed"] = "zmq: RunEngine + ophyd v1 sim detector -> HDF5 -> Publisher -> proxy -> worker"
    return result


def run_pva(work: Path, a: argparse.Namespace) -> dict:
    rss = PeakRss()
    env = loopback_env(free_port(), free_port(socket.SOCK_DGRAM))
    os.environ.update(env)
    channel = f"bench:{os.getpid()}:image"
    times_file = work / "published.json"
    server = Proc("pva_server", [sys.executable, str(ROOT / "callbacks" / "pva_sim_detector.py"),
                                 "--channel", channel, "--nx", str(NX), "--ny", str(NY),
                                 "--angles", str(a.frames), "--darks", str(a.darks),
                                 "--flats", str(a.flats), "--fps", str(a.fps), "--distinct", str(a.distinct),
                                 "--times", str(times_file), "--center", str(CENTER)],
                  env=env, stdin=True, log_dir=work)
    procs = [server]
    try:
        server.wait_line("READY", 600)
        rss.watch("pva server", server.proc.pid)
        tiled, sub, worker, record = start_common(work, a.binning, a.volume_binning, rss,
                                                  ["--pva", channel], env, a.timeout, streaming=a.streaming,
                                                  center=a.volume_center)
        procs += [tiled, sub, worker]
        server.send("GO")
        server.wait_line("DONE", a.timeout)
        sent = json.loads(times_file.read_text())
        proj_times = sent["published"][sent["darks"] + sent["flats"]:]
        result = finish(worker, sub, record, proj_times, proj_times[-1], a)
    finally:
        peaks = rss.stop()
        if server.proc.poll() is None:
            try:
                server.send("QUIT")
                server.proc.wait(10)
            except Exception:
                pass
        for p in reversed(procs):
            p.stop()
    result["peak_rss_gib"] = peaks
    result["feed"] = "pva: pvapy NTNDArray server -> worker --pva"
    return result


def finish(worker: Proc, sub: Proc, record: Path, proj_times: list[float], t_stop: float,
           a: argparse.Namespace) -> dict:
    """Wait for the settled final and the worker's full-volume line; compute the figures."""
    sub.proc.wait(a.timeout)
    deadline = time.monotonic() + a.timeout
    while (time.monotonic() < deadline and worker.proc.poll() is None
           and not any('"full_volume"' in x for _, x in worker.lines)):
        time.sleep(0.05)
    vol = next(((t, json.loads(x)) for t, x in worker.lines if '"full_volume"' in x), (None, None))
    worker.proc.wait(60)
    updates = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    live = [u for u in updates if not u["final"]]
    lat = []
    for u in live:
        arrived = (u["used"] or 0) + (u["skipped"] or 0)
        if 0 < arrived <= len(proj_times):
            lat.append(u["t"] - proj_times[arrived - 1])
    finals = [u for u in updates if u["final"]]
    settled = next((u for u in finals if not u["pending"]), finals[-1] if finals else None)
    n = len(proj_times)
    span = proj_times[-1] - proj_times[0] if n > 1 else float("nan")
    out = {
        "projections_written": n,
        "written_fps": round((n - 1) / span, 2) if n > 1 else None,
        "preview_used": settled["used"] if settled else None,
        "preview_skipped": settled["skipped"] if settled else None,
        "live_updates": len(live),
        "latency_s_median": round(statistics.median(lat), 3) if lat else None,
        "latency_s_p95": round(float(np.percentile(lat, 95)), 3) if lat else None,
        "stop_to_first_final_s": round(finals[0]["t"] - t_stop, 3) if finals else None,
        "stop_to_settled_final_s": round(settled["t"] - t_stop, 3) if settled else None,
        "sink_stop_to_final_s": finals[0]["stop_to_final_s"] if finals else None,
        "stop_to_full_volume_s": round(vol[0] - t_stop, 2) if vol[0] else None,
        "full_volume": vol[1]["full_volume"] if vol[1] else None,
    }
    for prov in sorted(record.parent.glob("data/volumes/*/*/result/provenance.json")):
        doc = json.loads(prov.read_text())  # how the volume was made, and where its stop time went
        out["full_volume_how"] = (doc.get("extra") or {}).get("streamed", "at stop (batch program)")
        out["full_volume_timings_s"] = doc.get("timings_s")
    partials = record.with_name("partials.jsonl")
    if partials.exists() and proj_times:
        polled = [json.loads(x) for x in partials.read_text().splitlines() if x.strip()]
        out["partial_volumes"] = [[round(p["t"] - proj_times[0], 1), p["n_projections_used"]]
                                  for p in polled if "n_projections_used" in p]
        in_tiled = [p["t"] for p in polled if p.get("kind") == "full"]
        # polled every POLL_S: up to that much late
        out["stop_to_volume_in_tiled_s"] = round(in_tiled[0] - t_stop, 2) if in_tiled else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", nargs="+", default=["zmq", "pva"], choices=["zmq", "pva"])
    ap.add_argument("--frames", type=int, default=300, help="projections per scan (ALS: 1969)")
    ap.add_argument("--darks", type=int, default=10)
    ap.add_argument("--flats", type=int, default=10)
    ap.add_argument("--fps", type=float, default=11.0)
    ap.add_argument("--distinct", type=int, default=8, help="distinct projections computed and cycled")
    ap.add_argument("--binning", type=int, default=2, help="preview binning")
    ap.add_argument("--volume-binning", type=int, default=4, help="full-volume binning (worker's recon)")
    ap.add_argument("--volume-mode", nargs="+", default=["streaming"], choices=["streaming", "at-stop"],
                    help="full volume grown during the scan, or made after the stop (both: compared)")
    ap.add_argument("--volume-center", default="given", choices=["given", "auto"],
                    help="given: the simulated axis (both feeds), as a beamline that knows it; auto: "
                         "found from the data, which --distinct < --frames makes meaningless (cycled "
                         "frames do not match their angles), so a streamed sum is then rarely confirmed")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--work", help="working folder (default: a temporary one, removed)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--subscribe", help=argparse.SUPPRESS)
    ap.add_argument("--record", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.subscribe:
        return subscriber_main(a.subscribe, a.record, a.timeout)
    # a SIGTERM must still run the clean-up below (it stops every child process)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="e2e-", dir=os.environ.get("TMPDIR")))
    results = {"load_before": os.getloadavg(), "frames": a.frames, "fps": a.fps, "binning": a.binning,
               "volume_binning": a.volume_binning, "runs": {}}
    try:
        for mode in a.mode:
            for volume_mode in a.volume_mode:
                a.streaming = volume_mode == "streaming"
                name = f"{mode} {volume_mode}"
                work = base / mode / volume_mode
                work.mkdir(parents=True, exist_ok=True)
                print(f"== {name}: {a.frames} projections of {NY} x {NX} at {a.fps} fps, "
                      f"load {os.getloadavg()}", flush=True)
                results["runs"][name] = {"load_start": os.getloadavg(),
                                         **(run_zmq if mode == "zmq" else run_pva)(work, a)}
                results["runs"][name]["load_after"] = os.getloadavg()
                print(json.dumps(results["runs"][name], indent=1), flush=True)
            streamed, at_stop = (results["runs"].get(f"{mode} {m}", {}) for m in ("streaming", "at-stop"))
            if streamed.get("stop_to_full_volume_s") and at_stop.get("stop_to_full_volume_s"):
                ratio = at_stop["stop_to_full_volume_s"] / streamed["stop_to_full_volume_s"]
                print(f"== {mode}: stop -> full volume {streamed['stop_to_full_volume_s']} s streamed, "
                      f"{at_stop['stop_to_full_volume_s']} s at stop ({ratio:.1f}x)", flush=True)
    finally:
        if not a.work:
            shutil.rmtree(base, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
