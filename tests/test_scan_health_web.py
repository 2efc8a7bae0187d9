"""The scan-health timeline of the Live page in a real browser: a simulated scan with each fault
goes through the health sink and the live preview onto a real 0MQ socket, the web page's live
feed and headless Chromium; the finding's band and words appear. Screenshots (one per fault, for
docs/how-to/scan-health.md) go to docs/images with UPDATE_DOCS_SCREENSHOTS=1."""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_web_page import KEY, WAIT_MS, _shot
from test_worker_zmq import free_port
from web_browser import browser

from bluesky_tomo_hpc.model import FrameBatch, FrameRole, ScanEnd, ScanSpec
from bluesky_tomo_hpc.sim.faults import BeamlineFaults
from bluesky_tomo_hpc.sim.optics import DetectorPhysics, FrameSimulator
from bluesky_tomo_hpc.sim.phantom import shepp_logan_3d
from bluesky_tomo_hpc.sinks.preview import PreviewSink
from bluesky_tomo_hpc.sinks.preview_stream import PreviewPublisher
from bluesky_tomo_hpc.sinks.scan_health_sink import ScanHealthSink
from bluesky_tomo_hpc.sinks.sink import SinkFanout

SHAPE = (64, 128)
FAULTS = {
    "beam_loss": BeamlineFaults(beam_dumps=((40, 70, 0.1),)),
    "sample_jump": BeamlineFaults(jumps=((90, 0.0, 5.0),)),
    "sample_motion_vertical": BeamlineFaults(jumps=((90, 3.0, 0.0),)),
    "saturated": BeamlineFaults(overexposed=((100, 110, 4.0),)),
}


@pytest.fixture(scope="module")
def page_and_publisher(tmp_path_factory):
    from bluesky_tomo_hpc.live.demo_run import demo_settings
    from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer
    from bluesky_tomo_hpc.web.app import build_web_app
    from bluesky_tomo_hpc.web.server import MOUNT, make_context

    data_dir = tmp_path_factory.mktemp("health-web")
    address = f"tcp://127.0.0.1:{free_port()}"
    publisher = PreviewPublisher(address, hwm=1000)
    holder: dict = {}
    ctx = make_context(demo_settings(data_dir, ranks=1), api_key=KEY, tiled_uri=lambda: holder["server"].uri,
                       preview_address=address)
    server = EmbeddedTiledServer(data_dir / "tiled", api_key=KEY, readable_storage=[data_dir],
                                 mounts={MOUNT: build_web_app(ctx)})
    holder["server"] = server
    try:
        yield f"{server.uri.removesuffix('/api/v1')}{MOUNT}/", publisher
    finally:
        ctx.close()
        server.close()
        publisher.close()


def _scan(publisher, uid: str, faults: BeamlineFaults, n: int = 180) -> dict:
    """One simulated scan through [health, preview] onto the publisher; the final health."""
    phantom = shepp_logan_3d(SHAPE, peak_line_integral=1.5, fill=0.85)
    sim = FrameSimulator(phantom, DetectorPhysics(shape=SHAPE), faults=faults)
    health = ScanHealthSink()
    preview = PreviewSink([publisher], publish_interval_s=0.1, extra_metadata=health.metadata)
    fan = SinkFanout([health, preview])
    fan.open(ScanSpec(uid, SHAPE, n_projections=n, angle_units="deg"))
    take = lambda **kw: np.stack([sim.acquire(**kw) for _ in range(4)])  # noqa: E731
    fan.add(FrameBatch(FrameRole.DARK, np.arange(4), take(angle_deg=0.0, shutter_open=False, sample_in=True)))
    fan.add(FrameBatch(FrameRole.FLAT, np.arange(4), take(angle_deg=0.0, shutter_open=True, sample_in=False)))
    for i, deg in enumerate(np.linspace(0.0, 180.0, n, endpoint=False)):
        frame = sim.acquire(angle_deg=float(deg), shutter_open=True, sample_in=True)
        fan.add(FrameBatch(FrameRole.PROJECTION, np.array([i]), frame[None], np.array([np.deg2rad(deg)])))
        time.sleep(0.005)  # a scan, not a burst: the page sees it grow
    fan.close(ScanEnd(uid))
    assert fan.errors == []
    return health.final.summary


def test_each_finding_shows_on_the_live_page(page_and_publisher):
    web, publisher = page_and_publisher
    with browser() as ctx:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(web, wait_until="load")
        page.fill("#api_key", KEY)
        page.click("#login")
        page.wait_for_selector("#tab-live:not(.hidden)", timeout=WAIT_MS)
        page.wait_for_function("document.querySelector('#live-feed').textContent.includes('tcp://')",
                               timeout=WAIT_MS)
        for k, (kind, faults) in enumerate(FAULTS.items()):
            summary = _scan(publisher, f"health-{kind}", faults)
            assert [f["kind"] for f in summary["findings"] if f["severity"] != "info"] == [kind]
            page.wait_for_function(f"(window.healthLog || []).filter(e => e.final).length > {k}",
                                   timeout=WAIT_MS)
            band = page.query_selector(f"#health-svg rect.finding.{kind}")
            assert band is not None, page.inner_html("#health-timeline")
            assert kind in page.text_content("#health-findings")
            assert page.text_content("#health-status").startswith(summary["status"])
            assert page.query_selector("#health-svg polyline.track.intensity") is not None
            _shot(page, f"health-{kind.replace('_', '-')}.png", full_page=True)
        assert errors == []
