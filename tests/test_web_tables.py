"""What a new user meets first, in headless Chromium: an empty catalog is an empty state, a
fresh install is healthy, the scans table fills and refreshes itself and tells runs apart, a
stored preview replaces every field of the last live scan, and ``demo`` publishes its live
preview to the page it serves (settings from the same loader as every command)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from web_browser import browser
from web_fixtures import KEY, WAIT_MS, Beamline, phantom, write_recon, write_run


@pytest.fixture
def bl(tmp_path):
    b = Beamline(tmp_path)
    yield b
    b.close()


def test_a_fresh_install_shows_an_empty_catalog_and_is_healthy(bl):
    with browser() as ctx:
        page = ctx.new_page()
        page.goto(f"{bl.web}?api_key={KEY}#scans")
        page.wait_for_selector("#runs tr.empty", timeout=WAIT_MS)
        assert "No scan in the catalog yet" in page.text_content("#runs")
        assert page.is_hidden("#message")  # not an error
        page.goto(f"{bl.web}#health")
        page.wait_for_selector("#health tr[data-check='journal'] .status-ok", timeout=WAIT_MS)
        statuses = page.eval_on_selector_all(
            "#health tbody tr", "rows => rows.map(r => [r.dataset.check, r.cells[0].textContent])"
        )
        assert all(s == "OK" for name, s in statuses if not name.startswith("space")), statuses


def test_the_scans_table_refreshes_itself_and_tells_runs_apart(bl):
    raw, processed = bl.containers()
    first = write_run(raw, "sample A")
    second = write_run(raw, "sample B")  # a new RunEngine: scan_id 1 again
    with browser() as ctx:
        page = ctx.new_page()
        page.goto(f"{bl.web}?api_key={KEY}#scans")
        page.wait_for_selector(f"#runs tr[data-uid='{second}']", timeout=WAIT_MS)
        uids = page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.cells[1].textContent)")
        assert uids == [second[:8], first[:8]]  # same scan id, told apart by their uid
        assert page.text_content(f"#runs tr[data-uid='{first}'] td:last-child") == "none yet"
        key = write_recon(processed, first, phantom((8, 16, 16)))
        # no click: the row gets its reconstruction by itself
        page.wait_for_selector(f"#runs tr[data-uid='{first}'] a.recon[data-kind='full']", timeout=WAIT_MS)
        page.click(f"#runs tr[data-uid='{first}'] a.recon[data-kind='full']")
        page.wait_for_function(f"window.reconOpened && window.reconOpened.key === {key!r}", timeout=WAIT_MS)


def test_a_stored_preview_replaces_every_field_of_the_last_live_scan(bl):
    from bluesky_tomo_hpc.sinks.preview_stream import PreviewUpdate
    from bluesky_tomo_hpc.web.live_feed import message_from_update

    raw, processed = bl.containers()
    uid = write_run(raw, "stored")
    slices = {"xy": phantom()[20], "xz": phantom()[:, 32], "yz": phantom()[:, :, 36]}
    write_reconstruction_md = {
        "n_projections_used": 90,
        "n_projections_expected": 90,
        "slice_indices": {"xy": 20, "xz": 32, "yz": 36},
        "center_source": "auto",
    }
    from bluesky_tomo_hpc.engine.params import ReconParams
    from bluesky_tomo_hpc.results.tiled_results import write_reconstruction

    write_reconstruction(
        processed,
        raw_uid=uid,
        params=ReconParams(),
        previews=slices,
        kind="preview",
        metadata=write_reconstruction_md,
    )
    live = PreviewUpdate(
        "other-run",
        {p: np.zeros((8, 8), np.float32) for p in ("xy", "xz", "yz")},
        {"xy": 3, "xz": 4, "yz": 5},
        seq=7,
        final=False,
        metadata={
            "n_projections_used": 12,
            "n_projections_expected": 400,
            "n_projections_skipped": 5,
            "center_check": {"done": False, "why": "stopped"},
        },
    )
    with browser() as ctx:
        page = ctx.new_page()
        page.goto(f"{bl.web}?api_key={KEY}#live")
        page.wait_for_selector(f"#live-finals button[data-run='{uid}']", timeout=WAIT_MS)
        bl.ctx.live.publish(message_from_update(live))
        page.wait_for_function("document.querySelector('#live-state').dataset.seq === '7'", timeout=WAIT_MS)
        assert "skipped" in page.text_content("#live-warnings")
        page.click(f"#live-finals button[data-run='{uid}']")
        page.wait_for_function(
            f"document.querySelector('#live-run').textContent === {uid!r}", timeout=WAIT_MS
        )
        assert page.text_content("#live-state") == "final (stored in Tiled)"
        assert page.text_content("#live-count") == "90 / 90 projections"
        assert page.text_content("#live-warnings") == ""
        assert page.text_content("#live-confidence") == "not checked"
        assert [page.text_content(f"#live-{p}-index") for p in ("xy", "xz", "yz")] == [
            "at 20",
            "at 32",
            "at 36",
        ]


def test_demo_publishes_its_live_preview_to_the_page_it_serves(tmp_path):
    """``run_demo`` as ``bluesky-tomo-hpc demo`` runs it: settings from the loader (here the
    environment names the preview address), the page mounted beside the embedded Tiled."""
    from test_worker_zmq import free_port

    from bluesky_tomo_hpc.live.demo_run import run_demo
    from bluesky_tomo_hpc.settings import load_settings
    from bluesky_tomo_hpc.web.server import web_mounts

    address = f"tcp://127.0.0.1:{free_port()}"
    settings = load_settings(
        environ={
            "BLUESKY_TOMO_HPC__PREVIEW__ZMQ_ADDRESS": address,
            "BLUESKY_TOMO_HPC__PREVIEW__PUBLISH_INTERVAL_S": "0.1",
        }
    )
    report, pipeline = run_demo(
        tmp_path / "demo",
        num_projections=40,
        shape=(16, 32),
        executor="none",
        say=lambda m: None,
        settings=settings,
        mounts=web_mounts,
        keep_server=True,
    )
    try:
        assert not report.errors, report.errors
        assert report.preview_address == address
        with httpx.Client(trust_env=False, timeout=30) as http:
            live = http.get(
                report.web_url + "api/live", headers={"Authorization": f"Apikey {report.api_key}"}
            ).json()
            assert live["feed"]["address"] == address
            assert live["feed"]["received"] > 0  # the page saw the demo's scan live
            assert [f["run_uid"] for f in live["finals"]] == [report.raw_uid]
            assert http.get(report.web_url, follow_redirects=False).status_code == 303  # no key: log in
    finally:
        pipeline.close()


def test_a_reconstruction_opens_from_its_stored_histogram_and_an_older_one_still_opens(bl):
    """The histogram stored with a result is the one the page would compute from the volume;
    opened from the scans table's listing it needs no volume read; a node without one (written
    before they were stored) or with a malformed one (outside data) is computed on open."""
    from bluesky_tomo_hpc.results.volume_stats import STATS_KEY, stats_of_array
    from bluesky_tomo_hpc.web.volume_reader import VolumeReader

    raw, processed = bl.containers()
    volume = phantom((24, 32, 40))
    key = write_recon(processed, write_run(raw, "stored histogram"), volume)
    stored = dict(processed[key].metadata[STATS_KEY])
    assert stored == stats_of_array(volume) and stored["shape"] == [24, 32, 40]
    want = {k: v for k, v in stored.items() if k != "shape"} | {"state": "complete"}

    def reader(ttl_s: float = 30.0) -> VolumeReader:  # 0: nothing kept, the listing not used
        return VolumeReader(bl.ctx.catalog, api_key=KEY, tiled_uri=lambda: bl.server.uri,
                            data_folder=bl.settings.data_dir, ttl_s=ttl_s)

    bl.ctx.catalog.reconstructions()  # the scans table's listing
    quick = reader()
    info = quick.info(key)
    assert info["stats"] == want and info["volume"]["shape"] == [24, 32, 40]
    assert info["previews"] == ["xy", "xz", "yz"] and info["key"] == key
    full = reader(0.0)
    assert full.info(key) == info  # through Tiled's look-up: the same answer
    for rec in (None, {**stored, "counts": ["x"]}, {**stored, "window": [1.0, float("inf")]},
                {**stored, "shape": [24, 32]}, "not a record"):
        processed[key].update_metadata({STATS_KEY: rec})
        computed = reader(0.0)
        assert computed.info(key)["stats"] == want, rec  # computed from the volume: the same
        computed.close()
    quick.close()
    full.close()
