"""The web page's speed in headless Chromium: page load, and a preview update to the page showing it.

A real embedded Tiled with the web page mounted at ``/web``, a real 0MQ preview publisher (the
pipeline's wire format), real Debian chromium through playwright. Each update's ``time`` is
stamped when it is made (as the preview sink does); the page records when its three slices are
decoded and on screen (``window.liveLog``); latency = shown - time, same machine clock.
Sizes, interleaved within each repeat: ``small`` = the demo's slices (64 x 128 x 128, 3 slices of
<= 128 px), ``full`` = an ALS-size binned-by-2 preview (slices 1080 x 1280 and 1280 x 1280,
float32: 6.5 MB per xy slice on the wire, shrunk to 512 px by the page's server).
Page load: ``performance`` navigation timing (start to load event end) of ``/web/``, and the time
until the first live image is on screen after a fresh load.

    python benchmarks/bench_web.py                 # 5 repeats x 15 updates per size, ~2 minutes
    python benchmarks/bench_web.py --repeats 2 --updates 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SIZES = {"small": ((64, 128), (64, 128), (128, 128)), "full": ((1280, 1280), (1080, 1280), (1080, 1280))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--updates", type=int, default=15, help="updates per size per repeat")
    ap.add_argument("--interval", type=float, default=0.5,
                    help="seconds between updates (the sink's default)")
    args = ap.parse_args()

    from web_browser import browser

    from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer
    from bluesky_tomo_hpc.settings import Settings
    from bluesky_tomo_hpc.sinks.preview_stream import PreviewPublisher, PreviewUpdate
    from bluesky_tomo_hpc.web.app import build_web_app
    from bluesky_tomo_hpc.web.server import MOUNT, make_context

    key = "benchkey" + "0" * 24
    address = f"tcp://127.0.0.1:{free_port()}"
    rng = np.random.default_rng(0)
    slices = {name: {p: rng.random(shape, dtype=np.float32) for p, shape in zip(("xy", "xz", "yz"), shp,
                                                                               strict=True)}
              for name, shp in SIZES.items()}
    latency: dict[str, list[float]] = {name: [] for name in SIZES}
    load_s: list[float] = []
    first_image_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), jobs={"executor": "none"})
        holder: dict = {}
        ctx = make_context(settings, api_key=key, tiled_uri=lambda: holder["s"].uri, preview_address=address)
        server = EmbeddedTiledServer(Path(tmp) / "tiled", api_key=key, mounts={MOUNT: build_web_app(ctx)})
        holder["s"] = server
        web = server.uri.removesuffix("/api/v1") + MOUNT + "/"
        pub = PreviewPublisher(address)
        seq = 0

        def publish(name: str) -> None:
            nonlocal seq
            seq += 1
            pub(PreviewUpdate(run_uid=f"bench-{name}", seq=seq, slices=slices[name],
                              indices={"xy": 1, "xz": 1, "yz": 1}, time=time.time(),
                              metadata={"n_projections_used": seq, "n_projections_expected": 10_000}))

        try:
            with browser() as bctx:
                page = bctx.new_page()
                page.goto(web + f"?api_key={key}")
                page.wait_for_selector("#tab-live:not(.hidden)")
                for _ in range(args.repeats):
                    # page load, then the first image after a fresh load
                    page.goto(web, wait_until="load")
                    nav = page.evaluate("performance.getEntriesByType('navigation')[0].toJSON()")
                    load_s.append((nav["loadEventEnd"] - nav["startTime"]) / 1000)
                    page.wait_for_function("document.querySelector('#live-feed').textContent.includes('tcp://')")
                    t0 = page.evaluate("performance.timeOrigin") / 1000
                    n0 = page.evaluate("window.liveLog.length")
                    publish("small")
                    page.wait_for_function(f"window.liveLog.length > {n0}")
                    first_image_s.append(page.evaluate("window.liveLog.at(-1).shown") - t0)
                    for name in SIZES:
                        n0 = page.evaluate("window.liveLog.length")
                        for _ in range(args.updates):
                            publish(name)
                            time.sleep(args.interval)
                        page.wait_for_function(f"window.liveLog.length >= {n0 + args.updates}",
                                               timeout=60_000)
                        log = page.evaluate(f"window.liveLog.slice({n0})")
                        latency[name].extend(e["shown"] - e["sent"] for e in log)
        finally:
            pub.close()
            server.close()
            ctx.close()
    result = {"load": os.getloadavg(), "page_load_s": summary(load_s),
              "first_image_after_load_s": summary(first_image_s),
              "update_to_shown_s": {k: summary(v) for k, v in latency.items()}}
    print(json.dumps(result, indent=2))
    print("\n| what | N | median | range |\n|---|---|---|---|")
    rows = [("page load (navigation start to load end)", result["page_load_s"]),
            ("first live image after a fresh load", result["first_image_after_load_s"])]
    rows += [(f"preview update to page ({k})", v) for k, v in result["update_to_shown_s"].items()]
    for what, s in rows:
        ms = {k: round(v * 1000) for k, v in s.items() if k != "n"}
        print(f"| {what} | {s['n']} | {ms['median']} ms | {ms['min']}-{ms['max']} ms |")
    print(f"\nload average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
