"""Journal, sizing, staging, movers and retention: the parts of batch jobs that need no MPI."""

from __future__ import annotations

import time

import h5py
import numpy as np
import pytest
from test_jobs_support import make_raw_scan

from bluesky_tomo_hpc.batch.batch_program import chunk_split
from bluesky_tomo_hpc.batch.job import JobOutputs, ReconJob
from bluesky_tomo_hpc.batch.sizing import Allocation, CostModel, SizingError, size_job
from bluesky_tomo_hpc.batch.staging import write_exchange_file
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.jobs.journal import Journal, JournalError, stage_statistics
from bluesky_tomo_hpc.jobs.movers.copy import LocalMover
from bluesky_tomo_hpc.jobs.movers.mover import TransferError
from bluesky_tomo_hpc.jobs.retention import RetentionRule, RetentionScheduler, prune
from bluesky_tomo_hpc.model import FrameBatch, TomoDataError
from bluesky_tomo_hpc.sources.raw_files import load_scan


def _job(tmp_path, run="r1", **params) -> ReconJob:
    return ReconJob(
        run_uid=run,
        input_path=tmp_path / "in.h5",
        params=ReconParams(**params),
        outputs=JobOutputs(directory=tmp_path / run),
    )


def test_job_round_trips_through_json(tmp_path):
    job = _job(tmp_path, center=30.0)
    assert ReconJob.read(job.write()) == job
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ReconJob.read(tmp_path / "none.json")


def test_chunk_split_gives_whole_chunks_and_covers_every_row():
    assert chunk_split(16, 4, 2) == [(0, 8), (8, 16)]
    assert chunk_split(10, 4, 2) == [(0, 8), (8, 10)]
    parts = chunk_split(5, 4, 3)
    assert parts[0] == (0, 4) and parts[1] == (4, 5) and parts[2][0] == parts[2][1]


def test_journal_states_statistics_and_reuse(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    durations = []
    for k in range(3):
        job = _job(tmp_path, run=f"r{k}")
        j.add(job, "local")
        for state in ("STAGED", "SUBMITTED", "RUNNING", "COMPLETED", "REGISTERED"):
            time.sleep(0.01 * (k + 1))
            j.set_state(job.job_id, state)
        durations.append(j.stage_durations(job.job_id)["total"])
    stats = {s.stage: s for s in stage_statistics(j)}
    assert set(stats) == {"stage", "queue", "run", "register", "total"}
    tot = stats["total"]
    assert tot.n == 3 and tot.minimum == min(durations) and tot.maximum == max(durations)
    assert tot.mean == pytest.approx(np.mean(durations)) and tot.sd == pytest.approx(
        np.std(durations, ddof=1)
    )
    assert "N=3" in tot.format() and "+/-" in tot.format()
    # the same run + params hash finds the registered job; other params do not
    again = _job(tmp_path, run="r0")
    assert j.find_reusable("r0", again.params.params_hash).state == "REGISTERED"
    assert j.find_reusable("r0", ReconParams(filter_name="hann").params_hash) is None
    with pytest.raises(JournalError, match="unknown job state"):
        j.set_state(again.job_id, "FINISHED")
    with pytest.raises(JournalError, match="no job"):
        j.get("nope")


def test_journal_is_shared_by_a_new_instance(tmp_path):
    j1 = Journal(tmp_path / "j.sqlite")
    job = _job(tmp_path)
    j1.add(job, "slurm")
    j1.set_state(job.job_id, "SUBMITTED", handle="123")
    j2 = Journal(tmp_path / "j.sqlite")  # another process, after a restart
    rec = j2.jobs(active_only=True)[0]
    assert (rec.job_id, rec.handle, rec.state, rec.job) == (job.job_id, "123", "SUBMITTED", job)


def test_measured_cost_sizes_a_job():
    from bluesky_tomo_hpc.batch.sizing import measure_voxel_cost

    cost = measure_voxel_cost(n=32, n_angles=30, rows=2, repeat=1)
    assert 1e-12 < cost.seconds_per_voxel_projection < 1e-3
    res = size_job((30, 2, 32), ReconParams(), cost, Allocation(max_nodes=1, cores_per_node=2))
    assert res.ranks == 1 and res.walltime_s >= 60


def test_sizing_scales_ranks_and_refuses_what_cannot_fit():
    cost = CostModel(seconds_per_voxel_projection=2e-9, overhead_s=10)
    alloc = Allocation(max_nodes=4, cores_per_node=64, max_walltime_s=1800, memory_mb_per_node=256_000)
    small = size_job((180, 128, 128), ReconParams(), cost, alloc)
    assert small.ranks == 1 and small.nodes == 1 and small.walltime_s >= 60
    big = size_job((1800, 2048, 2048), ReconParams(), cost, alloc, target_s=300)
    serial = 2048 * 2048 * 2048 * 1800 * 2e-9
    assert big.ranks == min(int(np.ceil(serial / 300)), 256) and big.nodes == -(-big.ranks // 64)
    assert big.walltime_s <= alloc.max_walltime_s
    with pytest.raises(SizingError, match="exceeds the allocation's 1800 s"):
        size_job((1800, 2048, 2048), ReconParams(), CostModel(2e-7), alloc)
    with pytest.raises(SizingError, match="MB each node"):
        size_job(
            (1800, 2048, 2048),
            ReconParams(),
            cost,
            Allocation(max_nodes=1, cores_per_node=64, memory_mb_per_node=4000),
        )
    binned = size_job((1800, 2048, 2048), ReconParams(binning=4), cost, alloc)
    assert binned.ranks < big.ranks


def test_staging_without_origins_writes_real_data(tmp_path):
    spec, batches, _ = make_raw_scan(tmp_path, run_uid="ev")
    events = [
        FrameBatch(b.role, b.indices, b.frames, angles=b.angles, timestamps=b.timestamps) for b in batches
    ]
    path = write_exchange_file(spec, events[::-1], tmp_path / "ev.h5")  # order of arrival does not matter
    with h5py.File(path) as f:
        assert not f["exchange/data"].is_virtual
        assert f["exchange/theta"].attrs["units"] == "degrees"
    virt = write_exchange_file(spec, batches, tmp_path / "virt.h5")
    a, b = load_scan(path), load_scan(virt)
    np.testing.assert_array_equal(a.projections, b.projections)
    np.testing.assert_array_equal(a.flats, b.flats)
    np.testing.assert_allclose(a.theta, np.linspace(0, np.pi, 90, endpoint=False))
    assert virt.stat().st_size < 64 * 1024 < path.stat().st_size


def test_staging_refuses_what_would_be_wrong(tmp_path):
    spec, batches, _ = make_raw_scan(tmp_path, run_uid="bad")
    no_angles = [FrameBatch(b.role, b.indices, b.frames, origin=b.origin) for b in batches]
    with pytest.raises(TomoDataError, match="without angles"):
        write_exchange_file(spec, no_angles, tmp_path / "x.h5")
    with pytest.raises(TomoDataError, match="no projection frames"):
        write_exchange_file(spec, batches[:2], tmp_path / "y.h5")
    wrong = [
        FrameBatch(
            batches[2].role,
            batches[2].indices,
            batches[2].frames,
            angles=batches[2].angles,
            origin=(spec.raw_files[0], "/missing", 0, 30),
        )
    ]
    with pytest.raises(TomoDataError, match="no dataset '/missing'"):
        write_exchange_file(spec, wrong, tmp_path / "z.h5")


def test_local_mover_verifies_checksums(tmp_path):
    src = tmp_path / "a" / "vol"
    src.mkdir(parents=True)
    (src / "x.bin").write_bytes(b"abc" * 1000)
    (src / "y.bin").write_bytes(b"z")
    res = LocalMover().copy(str(src), str(tmp_path / "b" / "vol"))
    assert res.files == 2 and res.bytes == 3001 and len(res.checksums["x.bin"]) == 64
    with pytest.raises(TransferError, match="does not exist"):
        LocalMover().copy(str(tmp_path / "none"), str(tmp_path / "c"))


def test_retention_deletes_only_verified_old_copies(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    stores = {"beamline": LocalMover(), "hpc": LocalMover()}
    for name in ("old", "orphan", "mismatch", "young"):
        for loc in ("beamline", "hpc"):
            p = tmp_path / loc / f"{name}.h5"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(b"x" * (10 if (name, loc) != ("mismatch", "beamline") else 11))
    now = time.time()
    day = 86400.0
    for name in ("old", "orphan", "mismatch"):
        j.add_copy(name, "hpc", str(tmp_path / "hpc" / f"{name}.h5"), created=now - 10 * day)
    j.add_copy("young", "hpc", str(tmp_path / "hpc" / "young.h5"), created=now - day)
    for name in ("old", "mismatch", "young"):
        j.add_copy(name, "beamline", str(tmp_path / "beamline" / f"{name}.h5"), created=now - 10 * day)
    (tmp_path / "beamline" / "orphan.h5").unlink()  # recorded nowhere else: must stay
    rules = [RetentionRule("hpc", max_age_s=7 * day, verify_at=("beamline",))]
    report = prune(j, rules, stores)
    assert report.deleted == [str(tmp_path / "hpc" / "old.h5")]
    assert not (tmp_path / "hpc" / "old.h5").exists() and (tmp_path / "beamline" / "old.h5").exists()
    kept = {p.rsplit("/", 1)[1] for p, _ in report.kept}
    assert kept == {"orphan.h5", "mismatch.h5"}
    assert (tmp_path / "hpc" / "young.h5").exists()
    sched = RetentionScheduler(j, rules, stores, interval_s=0.05).start()
    time.sleep(0.2)
    sched.stop()
    assert sched.last_report is not None and sched.last_report.deleted == []


def test_cli_lists_stats_and_cancels(tmp_path, capsys):
    import argparse

    from bluesky_tomo_hpc.cli import jobs as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    j = Journal(tmp_path / "j.sqlite")
    done, waiting = _job(tmp_path, run="done"), _job(tmp_path, run="waiting")
    j.add(done, "local")
    for s in ("STAGED", "SUBMITTED", "RUNNING", "COMPLETED", "REGISTERED"):
        j.set_state(done.job_id, s)
    j.add(waiting, "local")
    jf = str(tmp_path / "j.sqlite")
    args = parser.parse_args(["jobs", "--journal", jf, "list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert waiting.job_id in out and done.job_id not in out
    args = parser.parse_args(["jobs", "--journal", jf, "list", "--all"])
    args.func(args)
    assert done.job_id in capsys.readouterr().out
    args = parser.parse_args(["jobs", "--journal", jf, "stats"])
    args.func(args)
    out = capsys.readouterr().out
    assert "total" in out and "N=1" in out and "median" in out and "range" in out
    args = parser.parse_args(["jobs", "--journal", jf, "cancel", waiting.job_id])
    assert args.func(args) == 0
    assert j.get(waiting.job_id).state == "CANCELLED"


def test_factory_builds_from_settings(tmp_path):
    from bluesky_tomo_hpc.jobs.executors import make_executor
    from bluesky_tomo_hpc.jobs.executors.mpiexec import LocalExecutor
    from bluesky_tomo_hpc.jobs.factory import make_monitor, make_submit_sink
    from bluesky_tomo_hpc.settings import Settings

    s = Settings.model_validate(
        {
            "data_dir": str(tmp_path),
            "jobs": {"executor": "local", "ranks": 2, "options": {"threads_per_rank": 1}},
        }
    )
    mon = make_monitor(s, start=False)
    assert isinstance(mon.executors["local"], LocalExecutor) and mon.journal.path == tmp_path / "jobs.sqlite"
    sink = make_submit_sink(s, mon)
    assert sink.resources.ranks == 2 and sink.params == s.recon
    with pytest.raises(ValueError, match="switched off"):
        make_monitor(Settings.model_validate({"jobs": {"executor": "none"}}))
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("pbs")


def test_submit_sink_sizes_jobs_from_the_scan_and_refuses_oversize(tmp_path):
    """Without jobs.ranks the factory sizes each job from the scan shape and the allocation."""
    from bluesky_tomo_hpc.batch.sizing import SizingError
    from bluesky_tomo_hpc.jobs.factory import make_submit_sink
    from bluesky_tomo_hpc.settings import Settings

    # 1e-10 s per voxel and projection: our Fourier method on this machine (benchmarks/)
    settings = Settings(data_dir=tmp_path, jobs={"executor": "local", "seconds_per_voxel_projection": 1e-10,
                                                 "max_nodes": 1, "cores_per_node": 4, "max_walltime_s": 3600,
                                                 "memory_mb_per_node": 512_000})
    sink = make_submit_sink(settings, monitor=None)  # type: ignore[arg-type]
    small = sink.resources((180, 64, 128))
    assert small.ranks == 1 and small.walltime_s <= 60
    big = sink.resources((1969, 2160, 2560))  # ALS-size scan on a 4-core, 1-hour allocation
    assert big.ranks == 4 and 600 < big.walltime_s <= 3600
    with pytest.raises(SizingError, match="exceeds the allocation"):
        sink.resources((6000, 2160, 4096))
    three = settings.model_copy(update={"jobs": settings.jobs.model_copy(update={"ranks": 3})})
    fixed = make_submit_sink(three, monitor=None)  # type: ignore[arg-type]
    assert fixed.resources.ranks == 3


def test_local_jobs_queue_behind_max_running(tmp_path):
    """Back-to-back scans must not start one mpiexec each: the second job waits STAGED."""
    from bluesky_tomo_hpc.jobs.executors.mpiexec import LocalExecutor
    from bluesky_tomo_hpc.jobs.monitor import JobMonitor

    fake_mpiexec = tmp_path / "mpiexec"
    # stands in for ``mpiexec -n N python -m bluesky_tomo_hpc.batch JOB``: a second, then a result
    fake_mpiexec.write_text('#!/bin/sh\nsleep 1\necho {} > "$(dirname "$6")/../result.json"\n')
    fake_mpiexec.chmod(0o755)
    with pytest.raises(ValueError, match="max_running"):
        LocalExecutor(max_running=0)
    monitor = JobMonitor(Journal(tmp_path / "jobs.sqlite"), LocalExecutor(mpiexec=str(fake_mpiexec)),
                         poll_s=0.1)
    jobs = [monitor.add(_job(tmp_path, run=f"r{i}")) for i in range(3)]
    states = [monitor.submit(rec.job_id).state for rec in jobs]
    assert states == ["SUBMITTED", "STAGED", "STAGED"]
    assert any("queued: 1 of 1 local job(s) running" in (detail or "")
               for _, _, detail in monitor.journal.events(jobs[1].job_id))

    deadline = time.monotonic() + 60
    most_running = 0
    while time.monotonic() < deadline:
        monitor.step()
        current = [monitor.journal.get(rec.job_id).state for rec in jobs]
        most_running = max(most_running, sum(s in ("SUBMITTED", "PENDING", "RUNNING") for s in current))
        if all(s == "DONE" for s in current):
            break
        time.sleep(0.1)
    assert [monitor.journal.get(rec.job_id).state for rec in jobs] == ["DONE"] * 3
    assert most_running == 1
