"""Bad files and bad parameters on the command line: one line naming the problem, an exit code by class."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from bluesky_tomo_hpc.cli.errors import EXIT_INPUT, EXIT_OUTPUT, EXIT_USAGE
from bluesky_tomo_hpc.cli.main import main


def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and stderr of ``bluesky-tomo-hpc ARGV`` run in this process."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def _one_line_error(err: str, command: str, *words: str) -> str:
    assert "Traceback" not in err and "File \"" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"bluesky-tomo-hpc {command}:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _scan_file(path: Path, *, n: int = 24, theta: np.ndarray | None = None, nan_frames: int = 0) -> Path:
    """A small data-exchange file (random transmission, so any error is about the file itself)."""
    rng = np.random.default_rng(0)
    proj = (100 + 900 * rng.uniform(0.3, 0.9, (n, 4, 24))).astype(np.float32)
    proj[:nan_frames, 1, 5] = np.nan
    with h5py.File(path, "w") as f:
        f["/exchange/data"] = proj
        f["/exchange/data_white"] = np.full((3, 4, 24), 1000, np.float32)
        f["/exchange/data_dark"] = np.full((3, 4, 24), 100, np.float32)
        f["/exchange/theta"] = np.linspace(0, 180, n, endpoint=False) if theta is None else theta
    return path


@pytest.fixture
def scan(world) -> Path:
    return _scan_file(world.input("scan.h5"))


def _recon(capsys, world, path: Path, *extra: str) -> tuple[int, str]:
    center = [] if "--center" in extra else ["--center", "12"]
    return _cli(capsys, "recon", str(path), "--out", str(world.data / "rec"), *center, *extra)


# -- bad files --------------------------------------------------------------------------------------
def test_recon_of_a_text_file(capsys, world):
    """An 'HDF5' path that is a text file: exit 3, one line saying it is not an HDF5 file."""
    path = world.input("notes.h5")
    path.write_text("these are my notes\n")
    code, err = _recon(capsys, world, path)
    assert code == EXIT_INPUT
    _one_line_error(err, "recon", "not an HDF5 file", "notes.h5")


def test_recon_of_a_missing_file(capsys, world):
    """A scan path that does not exist: exit 3, one line naming the path."""
    code, err = _recon(capsys, world, world.root / "nope.h5")
    assert code == EXIT_INPUT
    _one_line_error(err, "recon", "no such scan file", "nope.h5")


def test_recon_of_a_truncated_file(capsys, world, scan):
    """An HDF5 file cut short (copy interrupted): exit 3, one line; the original is untouched."""
    cut = world.input("cut.h5")
    cut.write_bytes(scan.read_bytes()[: scan.stat().st_size // 2])
    code, err = _recon(capsys, world, cut)
    assert code == EXIT_INPUT
    _one_line_error(err, "recon", "cut.h5")
    with h5py.File(scan, "r") as f:
        assert f["/exchange/data"].shape == (24, 4, 24)


def test_recon_of_an_hdf5_file_without_a_scan(capsys, world):
    """An HDF5 file that is neither data-exchange nor NXtomo: exit 3, one line saying what was looked for."""
    path = world.input("other.h5")
    with h5py.File(path, "w") as f:
        f["/spectrum"] = np.arange(10)
    code, err = _recon(capsys, world, path)
    assert code == EXIT_INPUT
    _one_line_error(err, "recon", "other.h5")


def test_recon_theta_shorter_than_the_projections(capsys, world):
    """A theta with fewer angles than projections is refused (not replaced by 0..180 degrees): exit 3."""
    path = _scan_file(world.input("short.h5"), theta=np.linspace(0, 180, 20, endpoint=False))
    code, err = _recon(capsys, world, path)
    assert code == EXIT_INPUT
    _one_line_error(err, "recon", "/exchange/theta", "24 projections")
    assert not (world.data / "rec" / "recon.zarr").exists()


def test_recon_angles_that_span_nothing(capsys, world):
    """All projection angles equal (a stuck stage): refused, exit 3, saying the sample did not rotate."""
    path = _scan_file(world.input("stuck.h5"), theta=np.full(24, 42.0))
    code, err = _recon(capsys, world, path)
    assert code == EXIT_INPUT
    _one_line_error(err, "recon", "did not rotate")


def test_recon_warnings_reach_the_terminal(capsys, world):
    """NaN frames are repaired and said on the terminal, as well as stored in provenance.json: exit 0."""
    import json

    path = _scan_file(world.input("nan.h5"), nan_frames=3)
    code, err = _recon(capsys, world, path)
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert any("NaN" in w for w in warnings), err
    prov = json.loads((world.data / "rec" / "provenance.json").read_text())
    assert "NaN" in json.dumps(prov)


# -- bad parameters ---------------------------------------------------------------------------------
def test_recon_out_is_a_file(capsys, world, scan):
    """--out naming an existing file: exit 4 before any work, one line naming --out."""
    blocker = world.data / "rec"
    blocker.write_text("x")
    code, err = _recon(capsys, world, scan)
    assert code == EXIT_OUTPUT
    _one_line_error(err, "recon", "--out", "a file is in the way")


def test_recon_out_not_writable(capsys, world, scan):
    """--out in a folder nobody may write to: exit 4, one line naming --out."""
    if os.geteuid() == 0:  # root writes anywhere a permission bit is concerned: use a read-only place
        out = "/sys/bluesky-tomo-hpc-fault-case"
    else:
        locked = world.data / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out = str(locked / "rec")
    code, err = _cli(capsys, "recon", str(scan), "--out", out, "--center", "12")
    assert code == EXIT_OUTPUT
    _one_line_error(err, "recon", "--out", "cannot write")
    assert not Path(out).exists()


@pytest.mark.parametrize("argv, words", [
    (["--rows", "3:2"], ["rows", "(3, 2)"]),
    (["--rows", "all"], ["--rows must be START:STOP"]),
    (["--binning", "0"], ["--binning", "at least 1"]),
    (["--filter", "banana"], ["filter"]),
    (["--center", "left"], ["--center"]),
    (["--center", "nan"], ["center", "finite"]),
    (["--center", "1e300"], ["--center", "outside the detector"]),
])
def test_recon_bad_parameter(capsys, world, scan, argv, words):
    """A bad recon parameter: exit 2, one line naming the parameter."""
    code, err = _recon(capsys, world, scan, *argv)
    assert code == EXIT_USAGE
    _one_line_error(err, "recon", *words)


def test_recon_params_file_with_bad_yaml(capsys, world, scan):
    """A --params file that is not valid YAML: exit 2 or 3, one line naming the file."""
    bad = world.input("params.yml")
    bad.write_text("filter_name: [hann\n")
    code, err = _recon(capsys, world, scan, "--params", str(bad))
    assert code in (EXIT_USAGE, EXIT_INPUT)
    _one_line_error(err, "recon")


def test_demo_with_zero_projections(capsys, world):
    """demo --projections 0: exit 2 before any scan starts, one line."""
    code, err = _cli(capsys, "demo", "--projections", "0", "--data-dir", str(world.data / "demo"))
    assert code == EXIT_USAGE
    _one_line_error(err, "demo", "--projections", "at least 1")
    assert not (world.data / "demo").exists()


def test_demo_data_dir_is_a_file(capsys, world):
    """demo --data-dir naming a file: exit 4 before any scan starts."""
    (world.data / "d").write_text("x")
    code, err = _cli(capsys, "demo", "--data-dir", str(world.data / "d"), "--executor", "none")
    assert code == EXIT_OUTPUT
    _one_line_error(err, "demo", "--data-dir")


# -- settings ---------------------------------------------------------------------------------------
def test_environment_override_with_bad_yaml(capsys, world, monkeypatch):
    """An environment override that is not valid YAML: exit 2, one line naming the variable."""
    monkeypatch.setenv("BLUESKY_TOMO_HPC__RECON__CENTER", "[unclosed")
    code, err = _cli(capsys, "config")
    assert code == EXIT_USAGE
    _one_line_error(err, "config", "BLUESKY_TOMO_HPC__RECON__CENTER", "not valid YAML")


def test_settings_file_with_bad_yaml(capsys, world):
    """A settings file that is not valid YAML: exit 2, one line with the file and line number."""
    bad = world.input("settings.yml")
    bad.write_text("recon:\n  filter_name: hann\n  center: [1,\n")
    code, err = _cli(capsys, "--config", str(bad), "config")
    assert code == EXIT_USAGE
    _one_line_error(err, "config", "settings.yml", "line")


def test_settings_value_of_the_wrong_type(capsys, world, monkeypatch):
    """A setting of the wrong type or range: exit 2, one line naming the setting and the value."""
    monkeypatch.setenv("BLUESKY_TOMO_HPC__PREVIEW__BINNING", "-3")
    code, err = _cli(capsys, "config")
    assert code == EXIT_USAGE
    _one_line_error(err, "config", "preview.binning", "-3")


# -- jobs, serve, watch, worker ---------------------------------------------------------------------
def test_jobs_cancel_of_an_unknown_id(capsys, world):
    """jobs cancel of an id the journal does not hold: exit 2, one line saying how to list ids."""
    code, err = _cli(capsys, "jobs", "--journal", str(world.data / "jobs.sqlite"), "cancel", "nope")
    assert code == EXIT_USAGE
    _one_line_error(err, "jobs", "no job 'nope'", "jobs list --all")


def test_jobs_list_with_a_corrupt_journal(capsys, world):
    """A jobs journal that is not a database: exit 3, one line saying what to do; the file is kept."""
    journal = world.data / "jobs.sqlite"
    journal.write_text("this is not a database at all, but it is long enough to look like one " * 20)
    code, err = _cli(capsys, "jobs", "--journal", str(journal), "list")
    assert code in (0, EXIT_INPUT) and "Traceback" not in err, err  # reported, or set aside and recreated


def test_serve_on_a_folder_it_cannot_write(capsys, world):
    """serve --data-dir where Tiled cannot write: exit 4 before any server starts."""
    (world.data / "srv").write_text("x")
    code, err = _cli(capsys, "serve", "--data-dir", str(world.data / "srv"), "--port", "1")
    assert code == EXIT_OUTPUT
    _one_line_error(err, "serve", "--data-dir")


@pytest.mark.parametrize("command", ["watch", "worker"])
def test_bad_zmq_address(capsys, world, command, monkeypatch):
    """watch / worker with an address that is not tcp://HOST:PORT: exit 2, one line showing the form."""
    monkeypatch.setenv("BLUESKY_TOMO_HPC__DATA_DIR", str(world.data))
    argv = ["watch", "localhost5600", "--out", str(world.data / "w")] if command == "watch" else [
        "worker", "--zmq", "localhost5600", "--no-full-volume"]
    code, err = _cli(capsys, *argv)
    assert code == EXIT_USAGE
    _one_line_error(err, command, "tcp://HOST:PORT")


def test_debug_adds_the_traceback(capsys, world):
    """--debug prints the traceback as well as the one line."""
    path = world.input("notes.h5")
    path.write_text("notes")
    code = main(["--debug", "recon", str(path), "--out", str(world.data / "rec")])
    err = capsys.readouterr().err
    assert code == EXIT_INPUT and "Traceback" in err and err.rstrip().splitlines()[-1].startswith(
        "bluesky-tomo-hpc recon:")


# -- the worker's run journal ----------------------------------------------------------------------
def test_old_pickle_journal_is_never_loaded(world, caplog):
    """A <uid>.pickle journal (old format, or planted) is named in the log and never unpickled."""
    from bluesky_tomo_hpc.live.run_journal import RunJournal

    class Bomb:
        def __reduce__(self):
            return (os.system, (f"touch {world.sentinel}",))

    journal = world.data / "journal"
    journal.mkdir()
    (journal / "run-1.pickle").write_bytes(pickle.dumps(("start", {"uid": "run-1", "x": Bomb()})))
    assert RunJournal(journal).pending() == []
    assert "pickle" in caplog.text


@pytest.mark.parametrize("content", [b"\x80\x04garbage", b'{"name": "start"}\n', b'[1, 2]\n{"na',
                                     b'{"name": "start", "doc": "not a mapping"}\n'])
def test_damaged_run_journal_reads_as_far_as_it_is_whole(world, content):
    """A damaged JSON-lines journal is read up to the damage, never raising and never running code."""
    from bluesky_tomo_hpc.live.run_journal import RunJournal

    path = world.data / "run-1.jsonl"
    path.write_bytes(content)
    assert RunJournal.read(path) == []


def test_run_journal_with_a_hostile_uid_stays_in_its_folder(world, hostile):
    """RunJournal files for hostile uids are made and removed inside the journal folder only."""
    from bluesky_tomo_hpc.live.run_journal import RunJournal

    folder = world.data / "journal"
    j = RunJournal(folder)
    victim = world.data / "victim.jsonl"
    victim.write_text("keep me")
    for uid in hostile.values():
        j.open(uid)
        j.record("start", {"uid": uid})
        j.close(uid, delete=False)
    files = sorted(folder.iterdir())
    assert len(files) == len(hostile) - 2  # nul and 10 kB are refused (and logged)
    assert all(f.parent == folder for f in files)
    for uid in hostile.values():
        j.open(uid)
        j.close(uid)
    assert victim.read_text() == "keep me"
    shutil.rmtree(folder)


def test_jobs_list_shows_a_hostile_uid_without_terminal_escapes(capsys, world):
    """A run uid with terminal escape codes and newlines is listed as one printable line."""
    from bluesky_tomo_hpc.batch.job import JobOutputs, ReconJob
    from bluesky_tomo_hpc.jobs.journal import Journal

    uid = "\x1b[2J\x1b[31mFAKE\nDONE\r\x07"
    journal = Journal(world.data / "jobs.sqlite")
    journal.add(ReconJob(run_uid=uid, input_path=world.data / "in.h5",
                         outputs=JobOutputs(directory=world.data / "job")), "local")
    code = main(["jobs", "--journal", str(world.data / "jobs.sqlite"), "list", "--all"])
    out = capsys.readouterr().out
    assert code == 0 and "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert len(out.strip().splitlines()) == 2  # header and one row


def test_worker_with_an_unreachable_tiled(capsys, world, monkeypatch):
    """A worker whose Tiled URI nobody serves: exit 5, one line naming the URI."""
    monkeypatch.setenv("BLUESKY_TOMO_HPC__TILED__URI", "http://127.0.0.1:9/api/v1")
    monkeypatch.setattr("tiled.client.utils.TILED_RETRY_ATTEMPTS", 1)  # tiled retries for 45 s
    code, err = _cli(capsys, "worker", "--zmq", "tcp://127.0.0.1:9", "--timeout", "1")
    assert code == 5
    _one_line_error(err, "worker", "http://127.0.0.1:9/api/v1")


@pytest.mark.timeout(60)
def test_worker_restarted_on_a_corrupt_journal(capsys, world, monkeypatch):
    """A worker started on a journal holding garbage and an old pickle starts, runs no code, no traceback."""
    import socket

    monkeypatch.setenv("BLUESKY_TOMO_HPC__DATA_DIR", str(world.data))
    journal = world.data / "journal"
    journal.mkdir()
    (journal / "run-1.jsonl").write_bytes(b"\x00\xff garbage\n{not json\n")
    (journal / "run-2.pickle").write_bytes(b"\x80\x04garbage")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err = _cli(capsys, "worker", "--zmq", f"tcp://127.0.0.1:{port}", "--journal", str(journal),
                     "--no-full-volume", "--timeout", "1")
    assert code in (0, 1) and "Traceback" not in err, err
    assert (journal / "run-2.pickle").exists(), "an old journal is left for a person to deal with"
