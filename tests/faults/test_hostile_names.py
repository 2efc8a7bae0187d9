"""Hostile strings (uids, sample/plan names, job values) through names, scripts, the worker, jobs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from fault_world import (
    HOSTILE_IDS,
    assert_raw_intact,
    assert_scan_not_aborted,
    assert_stored_or_failed_with_reason,
)

from bluesky_tomo_hpc.model import MAX_COMPONENT_CHARS, UnsafeNameError, path_inside, safe_component

SCAN = {"num_projections": 24, "num_darks": 2, "num_flats": 2, "exposure": 0.0}
#: the hostile uids run through a whole scan (the others are covered by the cheaper cases)
SCAN_UIDS = ["dotdot", "subshell", "newline", "nul", "10kB"]


# -- the one rule ---------------------------------------------------------------------------------
@pytest.mark.parametrize("which", HOSTILE_IDS)
def test_safe_component_stays_in_its_folder_or_is_refused(world, hostile, which):
    """A hostile name becomes one harmless component inside its folder, or is refused naming why."""
    value = hostile[which]
    try:
        name = safe_component(value, "run uid")
    except UnsafeNameError as exc:
        assert which in ("nul", "10kB"), f"{which!r} should have been made safe: {exc}"
        assert "run uid" in str(exc) and "\n" not in str(exc)
        return
    assert which not in ("nul", "10kB")
    assert "/" not in name and "\x00" not in name and not name.startswith((".", "-"))
    assert name.isascii() and name.isprintable() and len(name) <= MAX_COMPONENT_CHARS
    assert not any(c in name for c in "$`;'\" \n")
    path = path_inside(world.data, value, what="run uid")
    path.mkdir()
    assert path.parent == world.data
    assert safe_component(value) == name, "the same input always gives the same name"


def test_distinct_hostile_names_never_share_a_folder(world, hostile):
    """Two different hostile strings that look alike after cleaning still get different folders."""
    names = {safe_component(v) for k, v in hostile.items() if k not in ("nul", "10kB")}
    names |= {safe_component("x$(touch f)"), safe_component("x$(touch g)"), safe_component("x__touch_f_")}
    assert len(names) == len(hostile) - 2 + 3


def test_symlink_planted_in_the_folder_is_refused(world):
    """A symbolic link inside the data folder that points out of it is refused, not followed."""
    outside = world.input("elsewhere")
    outside.mkdir()
    (world.data / "run-1").symlink_to(outside)
    with pytest.raises(UnsafeNameError, match="outside"):
        path_inside(world.data, "run-1", "job")


# -- Slurm: the job script, rendered and executed with bash (no Slurm needed) --------------------
def _job(world, run_uid: str) -> Any:
    from bluesky_tomo_hpc.batch.job import JobOutputs, ReconJob

    folder = path_inside(world.data / "jobs", run_uid, "0123abcd", what="run uid")
    return ReconJob(run_uid=run_uid, input_path=folder / "input.h5",
                    outputs=JobOutputs(directory=folder / "job"))


def _run_script(text: str, folder: Path) -> subprocess.CompletedProcess:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "job.sbatch"
    script.write_text(text)
    return subprocess.run(["bash", str(script)], cwd=folder, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("which", ["subshell", "backticks", "semicolon", "newline", "quotes", "dotdot",
                                   "dash"])
def test_slurm_script_runs_no_command_from_a_run_uid(world, hostile, which):
    """The sbatch script, run by bash, executes nothing from the uid and passes the job file intact."""
    from bluesky_tomo_hpc.jobs.executors.slurm import render_script

    job = _job(world, hostile[which])
    text = render_script(job, launcher="", program="printf '%s\\n'")
    assert hostile[which] not in text
    p = _run_script(text, job.outputs.directory)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(job.job_file)
    assert job.outputs.directory.is_relative_to(world.data)


def test_slurm_template_override_quoting_a_uid_is_still_safe(world, hostile):
    """A site template that writes "${run_uid}" in a shell line gets a safe name, not the raw uid."""
    from bluesky_tomo_hpc.jobs.executors.slurm import render_script

    job = _job(world, hostile["subshell"])
    template = 'echo "run ${run_uid}" > "${workdir}/name.txt"\n${launcher} ${program} ${job_file}\n'
    p = _run_script(render_script(job, template=template, launcher="", program="true"), job.outputs.directory)
    assert p.returncode == 0, p.stderr
    assert (job.outputs.directory / "name.txt").read_text().startswith("run x__touch")


@pytest.mark.parametrize("field", ["partition", "account"])
def test_slurm_directive_with_a_newline_is_refused(world, field):
    """A directive value that would add a line to the script is refused with the reason (permanent)."""
    from bluesky_tomo_hpc.jobs.executors.executor import PermanentError
    from bluesky_tomo_hpc.jobs.executors.slurm import render_script

    job = _job(world, "run-1")
    job = job.model_copy(update={"resources": job.resources.model_copy(update={field: "x\ntouch /tmp/y"})})
    with pytest.raises(PermanentError, match="cannot carry"):
        render_script(job)


# -- a real RunEngine scan whose documents carry a hostile uid or sample name --------------------
def _scan(RE, world, uid: str | None = None, md: dict | None = None, worker: Any = None,
          router: Any = None, **plan: Any) -> tuple[list[dict], Any]:
    """One small scan; every document goes to ``worker``/``router`` with the run uid replaced."""
    from bluesky_tomo_hpc.sim import make_sim_beamline, tomo_scan

    bl = make_sim_beamline(world.data / "raw", shape=(16, 32))
    real: list[str] = []
    stops: list[dict] = []

    def relabel(name: str, doc: dict) -> None:
        if name == "stop":
            stops.append(doc)
        if uid is not None:
            if name == "start":
                real.append(doc["uid"])
                doc = {**doc, "uid": uid}
            elif doc.get("run_start") in real:
                doc = {**doc, "run_start": uid}
        for target in (worker, router):
            if target is not None:
                target(name, doc)

    token = RE.subscribe(relabel)
    try:
        RE(tomo_scan(bl.detector, bl.stage, **{**SCAN, **plan}, md=md or {}))
    finally:
        RE.unsubscribe(token)
    return stops, bl


def _worker(world) -> Any:
    from bluesky_tomo_hpc.live.stream_worker import StreamWorker
    from bluesky_tomo_hpc.settings import Settings

    settings = Settings.model_validate({
        "data_dir": str(world.data), "full_volume": True,
        "preview": {"png_dir": str(world.data / "previews"), "journal_dir": str(world.data / "journal"),
                    "refine_center": False},
        "recon": {"circular_mask": None, "center": 15.5}})  # a given centre: no search, faster
    return StreamWorker(settings, client=None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", SCAN_UIDS)
def test_hostile_run_uid_through_the_worker(module_RE, world, hostile, which):
    """Scan completes; journal, previews, TIFFs stay in their folders; volume made or failed with a reason."""
    worker = _worker(world)
    try:
        stops, bl = _scan(module_RE, world, uid=hostile[which], worker=worker)
        assert worker.wait(60)
    finally:
        worker.close()
    assert_scan_not_aborted(stops)
    assert_raw_intact(world.data.glob("raw/**/*.h5"), frames=SCAN["num_projections"])
    # a uid that cannot be a file name (NUL, 10 kB) is reconstructed too, its files named by its hash
    assert_stored_or_failed_with_reason(worker.service.outcomes)
    assert list(worker.service.outcomes) == [hostile[which]]
    journal = world.data / "journal"
    assert not list(journal.iterdir()), "the journal of a finished run is removed"
    previews = sorted(p.name for p in (world.data / "previews").iterdir())
    if which == "nul":  # refused as a name: previewed and reconstructed, but no files
        assert previews == []
    else:
        assert any(p.endswith("_preview.png") for p in previews), previews
        assert all(p.isascii() and "/" not in p for p in previews)


@pytest.mark.timeout(60)
def test_hostile_sample_and_plan_metadata(module_RE, world, hostile):
    """Hostile sample names and notes in the metadata are carried as data only: the scan is reconstructed."""
    worker = _worker(world)
    try:
        md = {"sample": hostile["subshell"], "note": hostile["unicode"], "operator": hostile["newline"]}
        stops, _ = _scan(module_RE, world, md=md, worker=worker)
        assert worker.wait(60)
    finally:
        worker.close()
    assert_scan_not_aborted(stops)
    (outcome,) = worker.service.outcomes.values()
    assert outcome.ok, outcome.message


@pytest.mark.timeout(60)
def test_warnings_of_a_live_scan_reach_the_terminal(module_RE, world, caplog):
    """A scan over only 90 degrees is reconstructed, and the warning is logged (terminal) and stored."""
    worker = _worker(world)
    try:
        stops, _ = _scan(module_RE, world, worker=worker, stop=90.0)
        assert worker.wait(60)
    finally:
        worker.close()
    assert_scan_not_aborted(stops)
    (outcome,) = worker.service.outcomes.values()
    assert outcome.ok and any("cover only" in w for w in outcome.result.warnings)
    assert any("cover only" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


class _BashSlurm:
    """The Slurm executor's own script, run with bash here instead of sbatch (no Slurm needed)."""

    name = "slurm"

    def __init__(self) -> None:
        from bluesky_tomo_hpc.jobs.executors.slurm import SlurmExecutor

        self.slurm = SlurmExecutor(launcher="", program="printf 'job file %s\\n'")
        self.outputs: list[str] = []

    def submit(self, job: Any) -> str:
        job.write()
        p = _run_script(self.slurm.script(job), job.outputs.directory)
        self.outputs.append(p.stdout + p.stderr)
        return f"bash-{len(self.outputs)}"

    def status(self, handle: str) -> Any:
        from bluesky_tomo_hpc.jobs.executors.executor import RemoteState, RemoteStatus

        return RemoteStatus(RemoteState.RUNNING)

    def cancel(self, handle: str) -> None:
        pass

    def logs(self, handle: str) -> str:
        return ""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", ["subshell", "newline", "nul"])
def test_hostile_run_uid_to_a_slurm_batch_job(module_RE, world, hostile, which):
    """The batch job is staged in the jobs folder; its script runs no command (or is refused, saying why)."""
    from bluesky_tomo_hpc.jobs.journal import Journal
    from bluesky_tomo_hpc.jobs.monitor import JobMonitor
    from bluesky_tomo_hpc.jobs.submit_sink import HPCSubmitSink
    from bluesky_tomo_hpc.sources.documents import TomoRunRouter

    executor = _BashSlurm()
    monitor = JobMonitor(Journal(world.data / "jobs.sqlite"), {"slurm": executor})
    sink = HPCSubmitSink(monitor, world.data / "jobs", executor="slurm")
    router = TomoRunRouter(lambda: sink)
    stops, _ = _scan(module_RE, world, uid=hostile[which], router=router)
    sink.wait(30)
    assert_scan_not_aborted(stops)
    if which == "nul":
        assert sink.job_ids == [] and "NUL" in str(sink.errors[0][1])
        return
    (job_id,) = sink.job_ids
    rec = monitor.journal.get(job_id)
    assert rec.state == "SUBMITTED", (rec.state, rec.error, executor.outputs)
    (out,) = executor.outputs
    folder = next((world.data / "jobs").iterdir())
    assert out.strip() == f"job file {folder / sink.params.params_hash / 'job' / 'job.json'}"
    assert (folder / sink.params.params_hash / "input.h5").is_file()


@pytest.mark.timeout(120)
def test_hostile_uid_in_a_catalog_reprocessed_with_slurm(module_RE, world):
    """A run whose uid holds $(...) copied into a catalog and re-processed with Slurm runs no command."""
    from bluesky_tiled_plugins import TiledWriter

    from bluesky_tomo_hpc.engine.params import ReconParams
    from bluesky_tomo_hpc.jobs.journal import Journal
    from bluesky_tomo_hpc.jobs.monitor import JobMonitor
    from bluesky_tomo_hpc.live.catalog_replay import batch_submitter, reprocess
    from bluesky_tomo_hpc.results.tiled_results import processed_container
    from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer, raw_catalog

    uid = "x$(touch PWNED)`touch PWNED2`"  # Tiled keys cannot hold '/': the command is relative
    server = EmbeddedTiledServer(world.data / "tiled", readable_storage=[world.data])
    try:
        client = server.client()
        raw = raw_catalog(client)
        writer = TiledWriter(raw)
        stops, _ = _scan(module_RE, world, uid=uid, worker=writer)
        assert uid in raw
        executor = _BashSlurm()
        monitor = JobMonitor(Journal(world.data / "jobs.sqlite"), {"slurm": executor})
        params = ReconParams()
        submit = batch_submitter(monitor, world.data / "jobs", params, "slurm", raw)
        summary = reprocess(raw, processed_container(client), params=params, submit=submit)
    finally:
        server.close()
    assert_scan_not_aborted(stops)
    assert [o.status for o in summary.outcomes] == ["submitted"], summary.lines()
    (out,) = executor.outputs
    assert out.startswith("job file ") and "x__touch_PWNED_" in out
    assert not list(world.root.rglob("PWNED*")), "a command from the uid ran"
