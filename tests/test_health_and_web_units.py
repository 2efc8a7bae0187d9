"""The health checks and the web page's pieces without a browser: exit codes, stuck jobs, the
live message, the key, the catalog's guards (fast: no scan)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from bluesky_tomo_hpc.health.checks import (
    Check,
    check_free_space,
    check_journal,
    check_tiled,
    exit_code,
    run_checks,
    stuck_jobs,
)


def test_exit_code_is_the_worst_status():
    assert exit_code([]) == 0
    assert exit_code([Check("a", "ok", "")]) == 0
    assert exit_code([Check("a", "ok", ""), Check("b", "warn", "")]) == 1
    assert exit_code([Check("a", "fail", ""), Check("b", "warn", "")]) == 2


def test_tiled_down_and_wrong_key_fail_with_the_reason(tiled_server):
    from test_worker_zmq import free_port

    down = check_tiled(f"http://127.0.0.1:{free_port()}/api/v1", "k", timeout_s=2)
    assert down.status == "fail" and "unreachable" in down.message
    assert check_tiled(tiled_server.uri, tiled_server.api_key).status == "ok"
    wrong = check_tiled(tiled_server.uri, "wrongkey")
    assert wrong.status == "fail" and "refused the API key" in wrong.message


def _job(tmp_path, journal, state: str, walltime: int = 600):
    from bluesky_tomo_hpc.batch.job import JobOutputs, ReconJob, Resources

    job = ReconJob(run_uid="run1", input_path=tmp_path / "in.h5",
                   outputs=JobOutputs(directory=tmp_path / "o"), resources=Resources(walltime_s=walltime))
    journal.add(job, "local")
    if state != "NEW":
        journal.set_state(job.job_id, state)
    return job.job_id


def test_stuck_jobs_and_the_journal_check(tmp_path):
    from bluesky_tomo_hpc.jobs.journal import Journal

    path = tmp_path / "jobs.sqlite"
    assert check_journal(path).status == "ok"  # no job yet: a fresh install is healthy
    journal = Journal(path)
    running = _job(tmp_path, journal, "RUNNING", walltime=600)
    waiting = _job(tmp_path, journal, "NEW")
    done = _job(tmp_path, journal, "REGISTERED")
    assert stuck_jobs(journal.jobs(), now=time.time()) == []
    later = time.time() + 2 * 3600
    stuck = dict(stuck_jobs(journal.jobs(), now=later))
    assert set(stuck) == {running, waiting} and done not in stuck
    assert "RUNNING for" in stuck[running]
    check = check_journal(path)
    assert check.status == "ok" and "3 jobs, 2 active" in check.message
    path.write_bytes(b"not a database at all" * 100)
    assert check_journal(path).status == "fail"


def test_free_space_thresholds(tmp_path):
    assert check_free_space(tmp_path / "not" / "yet").status in ("ok", "warn")  # its parent is checked
    assert check_free_space(tmp_path, fail_bytes=1 << 62).status == "fail"
    assert check_free_space(tmp_path, warn_fraction=1.01, fail_bytes=0).status == "warn"


def test_health_command_prints_one_line_per_check_and_json(tmp_path, monkeypatch, capsys):
    from bluesky_tomo_hpc.cli.main import main

    monkeypatch.setenv("BLUESKY_TOMO_HPC__DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BLUESKY_TOMO_HPC__JOBS__EXECUTOR", "local")
    code = main(["health", "--location", str(tmp_path / "elsewhere")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1  # no Tiled URI configured, no journal yet: warnings
    assert [ln.split()[1] for ln in lines[:4]] == ["tiled", "journal", "stuck", "executor"]
    assert len(lines) == 6  # + free space of the data folder and the extra location
    code = main(["health", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == code == 1 and {c["name"] for c in data["checks"]} >= {"tiled", "journal"}


def test_run_checks_uses_the_settings(tmp_path):
    from bluesky_tomo_hpc.settings import Settings

    checks = run_checks(Settings(data_dir=tmp_path, jobs={"executor": "slurm"}), tiled_uri=None)
    assert [c.name for c in checks][:4] == ["tiled", "journal", "stuck jobs", "executor slurm"]


def test_live_message_has_three_pngs_progress_and_warnings():
    from bluesky_tomo_hpc.sinks.preview_stream import PreviewUpdate
    from bluesky_tomo_hpc.web.live_feed import message_from_update

    rng = np.random.default_rng(0)
    update = PreviewUpdate(
        run_uid="r1", seq=3, final=True, indices={"xy": 4, "xz": 5, "yz": 6},
        slices={p: rng.random((40, 1200)).astype(np.float32) for p in ("xy", "xz", "yz")},
        metadata={"n_projections_used": 90, "n_projections_expected": 100, "n_projections_skipped": 10,
                  "center": 12.5, "center_source": "auto",
                  "center_check": {"done": False, "why": "no projection pair 180 degrees apart"}})
    msg = message_from_update(update, max_side=300)
    assert msg["progress"] == {"used": 90, "expected": 100, "skipped": 10}
    assert all(msg["slices"][p]["png"].startswith("data:image/png;base64,") for p in ("xy", "xz", "yz"))
    assert len(msg["warnings"]) == 2
    assert "skipped" in msg["warnings"][0] and "not checked" in msg["warnings"][1]
    json.dumps(msg)  # goes to the browser as JSON
    update.metadata.update(center=14.0, center_source="0/180 pair", center_check={
        "done": True, "center": 14.0, "peak": 0.9, "shift_binned_px": 1.5, "recomputed": ["xy", "xz", "yz"]})
    msg = message_from_update(update)  # the page states the centre every slice is at
    assert msg["center"] == 14.0 and msg["center_source"] == "0/180 pair"
    assert msg["center_confidence"] == 0.9 and "centre moved by 1.5" in msg["warnings"][-1]


def test_png_is_small_and_8_bit():
    import io

    from PIL import Image

    from bluesky_tomo_hpc.web.images import to_png

    img = Image.open(io.BytesIO(to_png(np.arange(2000 * 1000, dtype=np.float32).reshape(2000, 1000),
                                       max_side=500)))
    assert img.mode == "L" and max(img.size) <= 500
    with pytest.raises(ValueError, match="2-D"):
        to_png(np.zeros((2, 2, 2)))


def test_sessions_are_random_server_side_and_end():
    from bluesky_tomo_hpc.web.auth import Sessions, key_matches

    sessions = Sessions(lifetime_s=60, max_sessions=2)
    a, b = sessions.start(), sessions.start()
    assert a != b and len(a) >= 32 and sessions.valid(a) and not sessions.valid("forged")
    sessions.end(a)
    assert not sessions.valid(a) and sessions.valid(b)
    c, d = sessions.start(), sessions.start()  # beyond max_sessions the oldest ends
    assert not sessions.valid(b) and sessions.valid(c) and sessions.valid(d)
    assert key_matches("k1", "k1") and not key_matches("k2", "k1") and not key_matches(None, "k1")


def test_catalog_refuses_keys_that_could_walk_into_other_containers():
    from bluesky_tomo_hpc.web.catalog import Catalog, CatalogError, levels_for

    cat = Catalog(lambda: pytest.fail("Tiled must not be asked"))
    for bad in ("../raw", "a/b", "", "x" * 300, "a b"):
        with pytest.raises(CatalogError, match="not a valid name") as info:
            cat.node(bad)
        assert info.value.status == 400
    assert levels_for([2160, 2560, 2560]) == 6 and levels_for([32, 64, 64]) == 2 and levels_for([8]) == 1


def test_retry_only_failed_or_cancelled_jobs(tmp_path):
    from bluesky_tomo_hpc.jobs.journal import Journal, JournalError
    from bluesky_tomo_hpc.jobs.monitor import JobMonitor

    journal = Journal(tmp_path / "jobs.sqlite")
    job_id = _job(tmp_path, journal, "RUNNING")

    class Nowhere:
        name = "local"

    mon = JobMonitor(journal, Nowhere())
    with pytest.raises(JournalError, match="only FAILED or CANCELLED"):
        mon.retry(job_id)
    journal.set_state(job_id, "FAILED", "boom", error="boom")
    rec = mon.retry(job_id)
    assert rec.state == "RETRY_WAIT" and rec.attempts == 0 and rec.error is None
    assert rec.next_try <= time.time()


def test_executor_checks_name_what_is_missing(tmp_path, monkeypatch):
    import os

    from bluesky_tomo_hpc.health.checks import check_executor

    assert check_executor("none").status == "ok"
    assert check_executor("local").status == "ok"  # mpich from the test extra
    assert check_executor("pbs").status == "fail"
    monkeypatch.delenv("NERSC_SFAPI_KEY", raising=False)
    assert "NERSC_SFAPI_KEY is not set" in check_executor("nersc").message
    key = tmp_path / "sfapi.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    monkeypatch.setenv("NERSC_SFAPI_KEY", str(key))
    key.chmod(0o644)
    assert check_executor("nersc").status == "warn"  # readable by others
    key.chmod(0o600)
    assert check_executor("nersc").status == "ok"
    old = time.time() - 27 * 86400
    os.utime(key, (old, old))
    nersc = check_executor("nersc")
    assert nersc.status == "warn" and "renew" in nersc.message
    monkeypatch.delenv("GLOBUS_COMPUTE_ENDPOINT", raising=False)
    assert "GLOBUS_COMPUTE_ENDPOINT" in check_executor("alcf").message


def test_volumes_are_read_in_place_only_inside_the_data_folder(tmp_path):
    import zarr

    from bluesky_tomo_hpc.web.volume_cache import local_zarr

    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for folder in (data, elsewhere):
        zarr.create_array(str(folder / "v"), shape=(4, 5, 6), chunks=(2, 5, 6), dtype="<f4")[:] = 1.0
    (data / "link").symlink_to(elsewhere / "v")
    f4 = np.dtype("<f4")

    def sources(uri: str, **change) -> list[dict]:
        asset = {"data_uri": uri, "is_directory": True}
        return [{"mimetype": "application/x-zarr", "parameters": {}, "assets": [asset], **change}]

    inside = f"file://localhost{data / 'v'}"
    assert local_zarr(sources(inside), data, (4, 5, 6), f4)[1, 2, 3] == 1.0
    refused = [
        (sources(f"file://localhost{elsewhere / 'v'}"), (4, 5, 6)),  # outside the folder
        (sources(f"file://localhost{data}/../elsewhere/v"), (4, 5, 6)),  # walks out
        (sources(f"file://localhost{data / 'link'}"), (4, 5, 6)),  # a link out
        (sources(f"file://otherhost{data / 'v'}"), (4, 5, 6)),  # another machine's file
        (sources(f"http://127.0.0.1{data / 'v'}"), (4, 5, 6)),
        (sources(inside, parameters={"path": "x"}), (4, 5, 6)),
        (sources(inside, mimetype="application/x-hdf5"), (4, 5, 6)),
        (sources(inside) * 2, (4, 5, 6)),
        (sources(inside), (4, 5, 7)),  # not what Tiled describes
        (sources(f"file://localhost{data / 'missing'}"), (4, 5, 6)),
    ]
    for srcs, shape in refused:
        assert local_zarr(srcs, data, shape, f4) is None, srcs
    assert local_zarr(sources(inside), None, (4, 5, 6), f4) is None  # not beside the data folder


def test_volume_cache_reads_each_volume_once_within_its_budget():
    import threading

    from bluesky_tomo_hpc.web.volume_cache import VolumeCache

    vol = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    reads: list[str] = []

    def read(name: str):
        def go() -> np.ndarray:
            reads.append(name)
            return vol
        return go

    cache = VolumeCache(max_bytes=2 * vol.nbytes, max_volume_bytes=vol.nbytes)
    assert cache.fits(vol.nbytes) and not cache.fits(vol.nbytes + 1)
    got: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: got.append(cache.load("a", read("a")))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert reads == ["a"] and len(got) == 4 and all(g is got[0] for g in got)
    assert not got[0].flags.writeable  # handed out only as copies
    np.testing.assert_array_equal(got[0], vol)
    cache.load("b", read("b"))
    cache.load("a", read("a"))  # used last: "b" is the one dropped for "c"
    cache.load("c", read("c"))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert reads == ["a", "b", "c"]


def test_a_stored_histogram_is_accepted_only_in_the_form_it_was_written():
    from bluesky_tomo_hpc.results.volume_stats import STATS_KEY, stats_of_array, stored_stats

    rec = stats_of_array(np.linspace(0, 1, 8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10))
    assert stored_stats({STATS_KEY: rec}) == rec and sum(rec["counts"]) == rec["sampled"] > 0
    bad = [{"counts": [True]}, {"counts": [-1]}, {"counts": [0] * 5000}, {"counts": "12"},
           {"range": [1.0, 0.0]}, {"window": [0.0, float("nan")]}, {"window": [0.0]},
           {"shape": [8, 9]}, {"shape": [0, 9, 10]}, {"step": 0}, {"sampled": -1}, {"sampled": 1.5}]
    for change in bad:
        assert stored_stats({STATS_KEY: {**rec, **change}}) is None, change
    assert stored_stats({}) is None and stored_stats(None) is None and stored_stats({STATS_KEY: [1]}) is None
