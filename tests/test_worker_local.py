"""StreamWorker in-process: per-scan sinks, centre memory between scans, the run journal."""

from __future__ import annotations

import numpy as np
from test_preview import disc, feed, phantom_scan, spec_for  # tests/ is on sys.path

from bluesky_tomo_hpc.live.stream_worker import RunJournal, StreamWorker
from bluesky_tomo_hpc.model import ScanEnd
from bluesky_tomo_hpc.settings import Settings


def preview_only(tmp_path) -> Settings:
    return Settings.model_validate({"data_dir": str(tmp_path), "full_volume": False,
                                    "preview": {"png_dir": str(tmp_path / "png")}})


def test_the_next_scan_starts_from_the_centre_the_last_one_found(tmp_path):
    worker = StreamWorker(preview_only(tmp_path))
    scan = phantom_scan(center=35.2)
    try:
        for uid in ("scan-1", "scan-2"):
            sinks = worker.make_sinks()
            sinks.open(spec_for(scan, uid=uid))
            feed(sinks, scan, uid=uid)
            sinks.close(ScanEnd(uid))
            assert worker.wait(30)
        first, second = (p.final for p in worker.previews)
    finally:
        worker.close()
    assert first.metadata["center_source"] == "0/180 pair"  # started at the detector middle, moved
    assert first.metadata["center_check"]["recomputed"] == ["xy", "xz", "yz"]
    assert second.metadata["center_source"] == "previous scan"
    assert abs(second.metadata["center"] - 35.2) < 0.5
    assert second.metadata["center_check"]["recomputed"] == []  # right from the start
    assert worker.ended == ["scan-1", "scan-2"]
    m = disc(64)
    truth = scan["truth_xy"][m]
    for plane in ("xy",):
        assert np.corrcoef(second.slices[plane][m], truth)[0, 1] > 0.9
    assert (tmp_path / "png" / "scan-2_preview.png").exists()


def test_journal_keeps_the_documents_of_open_runs_and_survives_a_torn_record(tmp_path):
    j = RunJournal(tmp_path)
    j.open("run-A")
    j.record("start", {"uid": "run-A"})
    j.record("descriptor", {"uid": "d1", "run_start": "run-A"})
    j.record("event", {"uid": "e1", "descriptor": "d1", "data": {}})
    j.record("event", {"uid": "x", "descriptor": "other-run-descriptor", "data": {}})
    j.record("event", {"uid": "big", "descriptor": "d1", "data": {"img": np.zeros(300_000)}})
    assert j.skipped_docs == 1
    j.close_all()
    path = tmp_path / "run-A.jsonl"
    with open(path, "a") as f:  # a record cut short by kill -9
        f.write('{"name": "event", "doc": {"uid": "tor')
    docs = RunJournal.read(path)
    assert [d["uid"] for _, d in docs] == ["run-A", "d1", "e1"]
    assert RunJournal(tmp_path).pending() == [path]


def test_full_volume_at_stop_goes_to_tiled_next_to_the_preview(tmp_path, tiled_client):
    settings = Settings.model_validate({"data_dir": str(tmp_path), "full_volume": True,
                                        "recon": {"center": 35.2, "circular_mask": None}})
    worker = StreamWorker(settings, client=tiled_client)
    scan = phantom_scan(center=35.2)
    try:
        sinks = worker.make_sinks()
        sinks.open(spec_for(scan, uid="run-full"))
        feed(sinks, scan, uid="run-full")
        sinks.close(ScanEnd("run-full"))
        assert worker.wait(120)
    finally:
        worker.close()
    outcome = worker.service.outcomes["run-full"]
    assert outcome.ok, outcome.message
    assert outcome.shape == (16, 64, 64)
    processed = tiled_client["processed"]
    kinds = {processed[k].metadata["kind"]: processed[k] for k in processed
             if processed[k].metadata["raw_uid"] == "run-full"}
    assert set(kinds) == {"full", "preview"}
    vol = kinds["full"]["volume"].read()
    preview_xy = kinds["preview"]["preview_xy"].read()
    z0 = worker.previews[0].final.indices["xy"]
    m = disc(64)
    # the engine's volume and the live preview agree on the slice they share
    assert np.corrcoef(vol[z0][m], preview_xy[m])[0, 1] > 0.95
