"""``bluesky-tomo-hpc watch``: a real subscriber process writing the live preview as files."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import tifffile
from test_preview import feed, phantom_scan, spec_for  # tests/ is on sys.path

from bluesky_tomo_hpc.model import ScanEnd
from bluesky_tomo_hpc.sinks.preview import PreviewSink
from bluesky_tomo_hpc.sinks.preview_stream import PreviewPublisher
from bluesky_tomo_hpc.sinks.scan_health_sink import ScanHealthSink
from bluesky_tomo_hpc.sinks.sink import SinkFanout

WATCH = [sys.executable, "-m", "bluesky_tomo_hpc.cli.main", "watch"]


def test_watch_writes_tiff_and_png_files_of_the_final_preview(tmp_path):
    pub = PreviewPublisher("tcp://127.0.0.1:*")
    out = tmp_path / "watch"
    proc = subprocess.Popen(WATCH + [pub.address, "--out", str(out), "--until-final", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        scan = phantom_scan()
        probe = PreviewSink([], publish_interval_s=0.0)  # its updates are sent by hand below
        probe.open(spec_for(scan, uid="probe-run"))
        feed(probe, scan, uid="probe-run")
        probe.close(ScanEnd("probe-run"))
        probe.wait_final(30)
        deadline = time.monotonic() + 60
        while not lines and time.monotonic() < deadline:  # 0MQ slow joiner: until the watcher hears
            pub(probe.snapshot(final=False))
            time.sleep(0.1)
        health = ScanHealthSink()  # its findings ride in the preview's metadata; watch prints them
        sink = PreviewSink([pub], publish_interval_s=0.05, extra_metadata=health.metadata)
        both = SinkFanout([health, sink])
        both.open(spec_for(scan, uid="0123456789abcdef"))
        feed(both, scan, uid="0123456789abcdef")
        both.close(ScanEnd("0123456789abcdef"))
        final = sink.wait_final(30)
        assert proc.wait(60) == 0, proc.stderr.read()[-2000:]
        reader.join(10)
    finally:
        pub.close()
        if proc.poll() is None:
            proc.kill()
    assert any(line.startswith("run 0123456789abcdef") and line.strip().endswith("health ok final")
               for line in lines), lines[-3:]
    for plane in ("xy", "xz", "yz"):
        np.testing.assert_array_equal(tifffile.imread(out / f"01234567_{plane}.tif"), final.slices[plane])
    assert (out / "01234567_preview.png").stat().st_size > 1000


def test_watch_without_a_display_says_to_use_files():
    env = {**os.environ, "MPLBACKEND": "Agg"}
    r = subprocess.run(WATCH + ["tcp://127.0.0.1:9", "--timeout", "1"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2 and "--out DIR" in r.stderr
