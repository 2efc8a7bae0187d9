"""Local executor: ``mpiexec -n N python -m bluesky_tomo_hpc.batch`` on this machine.

The job runs in its own session (``start_new_session``), so it outlives the IPython session that
started it; everything needed to follow it afterwards lives in its run folder (the handle):
``pid`` (with the process start time, against PID reuse), ``batch.log`` and, when it ends,
``exit_code``. Cancelling signals the whole process group.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ...batch.job import ReconJob
from ...extras import MissingPackage
from .executor import RemoteState, RemoteStatus, status_from_exit_code

#: what asks for mpiexec, in the words of the setting
LOCAL_MPI_FEATURE = "the local executor (jobs.executor: local)"


def find_mpiexec() -> str | None:
    """``mpiexec`` next to this Python (the ``mpich`` wheel of the core install), else on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def _find_mpiexec() -> str:
    found = find_mpiexec()
    if not found:
        raise MissingPackage(LOCAL_MPI_FEATURE, "mpiexec")
    return found


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in ticks), or None if the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


class LocalExecutor:
    """Runs jobs with mpiexec on this host; ``ranks`` overrides the job's own request.

    ``max_running`` (default 1): each job sizes its ranks to this machine's cores, so a second
    one at the same time only competes for them; back-to-back scans queue instead of starting
    one mpiexec each (seen in the soak benchmark: 160 at once).
    """

    name = "local"

    def __init__(
        self,
        ranks: int | None = None,
        mpiexec: str | None = None,
        python: str | None = None,
        threads_per_rank: int | None = None,
        max_running: int | None = 1,
    ):
        if max_running is not None and max_running < 1:
            raise ValueError(f"max_running must be at least 1 (or null for no limit), got {max_running}")
        self.max_running = max_running
        self.ranks = ranks
        self.mpiexec = mpiexec or _find_mpiexec()
        self.python = python or sys.executable
        self.threads_per_rank = threads_per_rank
        self._children: dict[str, subprocess.Popen] = {}

    def command(self, job: ReconJob, job_file: Path) -> list[str]:
        ranks = self.ranks or job.resources.ranks
        return [self.mpiexec, "-n", str(ranks), self.python, "-m", "bluesky_tomo_hpc.batch", str(job_file)]

    def submit(self, job: ReconJob) -> str:
        run_dir = job.outputs.directory / f"local-{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(3).hex()}"
        run_dir.mkdir(parents=True)
        job_file = job.write(run_dir / "job.json")
        cmd = shlex.join(self.command(job, job_file))
        script = (
            f"echo $$ > pid.tmp && mv pid.tmp pid; {cmd} > batch.log 2>&1; "
            f"echo $? > exit_code.tmp && mv exit_code.tmp exit_code"
        )
        env = dict(os.environ)
        threads = str(self.threads_per_rank or job.resources.cpus_per_rank)
        env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        proc = subprocess.Popen(
            ["/bin/sh", "-c", script],
            cwd=run_dir,
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        (run_dir / "start").write_text(f"{proc.pid} {_start_time(proc.pid)}")
        self._children[str(run_dir)] = proc
        return str(run_dir)

    def _reap(self, handle: str) -> None:
        proc = self._children.get(handle)
        if proc is not None and proc.poll() is not None:
            del self._children[handle]

    def status(self, handle: str) -> RemoteStatus:
        run_dir = Path(handle)
        self._reap(handle)
        if not run_dir.is_dir():
            return RemoteStatus(RemoteState.LOST, reason=f"run folder {run_dir} is gone")
        if (run_dir / "cancelled").exists():
            return RemoteStatus(RemoteState.CANCELLED, reason="cancelled")
        code_file = run_dir / "exit_code"
        if code_file.exists():
            code = int(code_file.read_text().strip())
            return status_from_exit_code(code, self._failure_line(run_dir) if code else "",
                                         self.logs(handle) if code else "")
        pid, start = (run_dir / "start").read_text().split()
        if _start_time(int(pid)) == start:
            return RemoteStatus(RemoteState.RUNNING)
        return RemoteStatus(
            RemoteState.LOST, reason=f"process {pid} ended without an exit code (killed?)", transient=True
        )

    @staticmethod
    def _failure_line(run_dir: Path) -> str:
        try:
            lines = (run_dir / "batch.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        failed = [ln for ln in lines if ln.startswith("JOB FAILED")]
        return failed[0] if failed else (lines[-1] if lines else "")

    def cancel(self, handle: str) -> None:
        run_dir = Path(handle)
        (run_dir / "cancelled").write_text(str(time.time()))
        try:
            pid, start = (run_dir / "start").read_text().split()
        except OSError:
            return
        if _start_time(int(pid)) == start:
            try:
                os.killpg(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
        self._reap(handle)

    def logs(self, handle: str) -> str:
        try:
            return (Path(handle) / "batch.log").read_text(errors="replace")
        except OSError:
            return ""
