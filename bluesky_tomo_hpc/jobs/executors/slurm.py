"""Slurm executor: ``sbatch`` from a template file, followed with ``scontrol``/``sacct``, ``scancel``.

The script is rendered from ``templates/slurm.sbatch`` (``string.Template``; override with
``template=``), never assembled inline. No value from outside reaches it as text a shell would
interpret: the run uid and job id appear as safe names (:func:`bluesky_tomo_hpc.model.safe_component`), paths
in shell lines are :func:`shlex.quote`-d, and ``#SBATCH`` lines refuse what Slurm would misread.
A job that Slurm has purged from ``scontrol`` is looked up in ``sacct`` (when accounting runs)
and otherwise reported LOST. Node failures and preemption are transient; a batch-program exit
code says whether its own failure is.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from string import Template

from ...batch.job import ReconJob
from ...model import UnsafeNameError, safe_component
from .executor import (
    PermanentError,
    RemoteState,
    RemoteStatus,
    TransientError,
    killing_signal,
    signal_name,
    status_from_exit_code,
)

_PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"}
_TRANSIENT = {"NODE_FAIL", "BOOT_FAIL", "PREEMPTED", "DEADLINE"}


def default_launcher() -> str:
    """mpiexec of this Python's environment (pip mpich), which launches through srun in a job."""
    here = Path(sys.executable).parent / "mpiexec"
    return f"{shlex.quote(str(here)) if here.exists() else 'mpiexec'} -n $$SLURM_NTASKS"


def _walltime(seconds: int) -> str:
    m = max(1, -(-seconds // 60))
    return f"{m // 60:02d}:{m % 60:02d}:00"


#: what a value on an ``#SBATCH`` line may hold (sbatch splits those lines on blanks itself)
_DIRECTIVE_VALUE = re.compile(r"[A-Za-z0-9._/+,@%:=~-]*")


def _directive_value(key: str, value: object) -> str:
    text = str(value)
    if not _DIRECTIVE_VALUE.fullmatch(key) or not _DIRECTIVE_VALUE.fullmatch(text):
        raise PermanentError(
            f"Slurm directive --{key}={text!r:.80} holds characters an #SBATCH line cannot carry "
            "(blanks, quotes, newlines, shell characters); use letters, digits and ._/+,@%:=~-"
        )
    return text


def default_template() -> str:
    return files("bluesky_tomo_hpc.jobs").joinpath("templates/slurm.sbatch").read_text()


def render_script(
    job: ReconJob,
    *,
    template: str | None = None,
    launcher: str | None = None,
    program: str | None = None,
    setup: str = "",
    directives: dict[str, str] | None = None,
    workdir: Path | None = None,
) -> str:
    """The batch script for ``job`` (every value the template names must be given)."""
    r = job.resources
    extra = dict(directives or {})
    for k, v in (("partition", r.partition), ("qos", r.qos), ("account", r.account)):
        if v:
            extra.setdefault(k, v)
    if r.memory_mb:
        extra.setdefault("mem", f"{r.memory_mb}M")
    workdir = workdir or job.outputs.directory
    try:
        job_id = safe_component(job.job_id, "job id")
        run_name = safe_component(job.run_uid, "run uid")
    except UnsafeNameError as exc:
        raise PermanentError(str(exc)) from exc
    values = {
        "job_id": job_id,
        "run_uid": run_name,
        "job_name": f"tomo-{job_id}",
        "ranks": r.ranks,
        "nodes": r.nodes,
        "cpus_per_rank": r.cpus_per_rank,
        "walltime": _walltime(r.walltime_s),
        "workdir": _directive_value("output", workdir),
        "directives": "\n".join(f"#SBATCH --{k}={_directive_value(k, v)}" for k, v in extra.items()),
        "setup": setup,
        "launcher": Template(default_launcher() if launcher is None else launcher).safe_substitute(),
        "program": program or f"{shlex.quote(sys.executable)} -m bluesky_tomo_hpc.batch",
        "job_file": shlex.quote(str(job.job_file)),
    }
    try:
        return Template(template or default_template()).substitute(values)
    except KeyError as exc:
        raise PermanentError(
            f"Slurm template names ${exc.args[0]}, which the executor does not provide"
        ) from exc


def _run(args: list[str], what: str) -> str:
    if shutil.which(args[0]) is None:
        raise PermanentError(f"{args[0]} not found: is Slurm installed on this host?")
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        msg = (p.stderr or p.stdout).strip()
        if "Invalid job id" in msg:
            raise LookupError(msg)
        exc = (
            PermanentError
            if ("Invalid account" in msg or "Access" in msg or "denied" in msg)
            else TransientError
        )
        raise exc(f"{what} failed ({p.returncode}): {msg}")
    return p.stdout


def interpret_state(info: dict[str, str]) -> RemoteStatus:
    """A Slurm record (``JobState``, ``ExitCode`` "code:signal", ``Reason``) as a :class:`RemoteStatus`.

    Shared by every executor that ends in Slurm (local sbatch, NERSC through SFAPI).
    """
    state = (info.get("JobState") or "UNKNOWN").split()[0]
    code_s, _, sig = info.get("ExitCode", "0:0").partition(":")
    code = int(code_s) if code_s.isdigit() else None
    reason = info.get("Reason", "")
    if state in _PENDING:
        return RemoteStatus(RemoteState.PENDING, reason=reason, raw=info)
    if state in _RUNNING:
        return RemoteStatus(RemoteState.RUNNING, raw=info)
    if state == "CANCELLED":
        return RemoteStatus(RemoteState.CANCELLED, code, "cancelled in Slurm", raw=info)
    if state in _TRANSIENT:
        return RemoteStatus(RemoteState.FAILED, code, f"Slurm {state}", transient=True, raw=info)
    if state == "TIMEOUT":
        return RemoteStatus(
            RemoteState.FAILED, code, "walltime exceeded: the job needs a larger --time", raw=info
        )
    if state == "OUT_OF_MEMORY":
        return RemoteStatus(
            RemoteState.FAILED, code, "out of memory: the job needs more ranks or memory", raw=info
        )
    if state in ("COMPLETED", "FAILED"):
        if sig not in ("", "0"):
            name = signal_name(int(sig)) if sig.isdigit() else "a signal"
            why = f"killed by {name} (signal {sig})"
            return RemoteStatus(RemoteState.FAILED, code, why, transient=True, raw=info)
        st = status_from_exit_code(code if state == "FAILED" else 0)
        return RemoteStatus(
            st.state, st.exit_code, f"Slurm {state}: {st.reason}".rstrip(": "), st.transient, raw=info
        )
    return RemoteStatus(RemoteState.FAILED, code, f"Slurm state {state}", raw=info)


class SlurmExecutor:
    """Submits with ``sbatch`` on this host (or a login node whose Slurm commands are on PATH)."""

    name = "slurm"
    max_running: int | None = None  # the site's scheduler queues jobs

    def __init__(
        self,
        template: str | Path | None = None,
        launcher: str | None = None,
        setup: str = "",
        directives: dict[str, str] | None = None,
        program: str | None = None,
    ):
        self.template = Path(template).read_text() if template else None
        self.launcher, self.setup, self.directives, self.program = launcher, setup, directives, program

    def script(self, job: ReconJob) -> str:
        return render_script(
            job,
            template=self.template,
            launcher=self.launcher,
            program=self.program,
            setup=self.setup,
            directives=self.directives,
        )

    def submit(self, job: ReconJob) -> str:
        job.write()
        script = job.outputs.directory / "job.sbatch"
        script.write_text(self.script(job))
        out = _run(["sbatch", "--parsable", str(script)], "sbatch")
        return out.strip().split(";")[0]

    def _scontrol(self, handle: str) -> dict[str, str] | None:
        try:
            out = _run(["scontrol", "show", "job", "-o", handle], "scontrol")
        except LookupError:
            return None
        fields = {}
        for tok in out.split():
            k, sep, v = tok.partition("=")
            if sep:
                fields[k] = v
        return fields

    def _sacct(self, handle: str) -> dict[str, str] | None:
        try:
            out = _run(["sacct", "-n", "-P", "-X", "-j", handle, "-o", "State,ExitCode,Reason"], "sacct")
        except (TransientError, LookupError):
            return None  # accounting is off here
        line = out.strip().splitlines()
        if not line:
            return None
        state, code, reason = (line[0].split("|") + ["", "", ""])[:3]
        return {"JobState": state.split()[0], "ExitCode": code, "Reason": reason}

    def status(self, handle: str) -> RemoteStatus:
        info = self._scontrol(handle) or self._sacct(handle)
        if info is None:
            return RemoteStatus(
                RemoteState.LOST, reason=f"Slurm does not know job {handle} (purged?)", transient=True
            )
        st = interpret_state(info)
        if st.state == RemoteState.FAILED and not st.transient:
            log = _read(info.get("StdOut"))
            if killing_signal(log) is not None:  # a rank killed under mpiexec: say which signal
                st = status_from_exit_code(st.exit_code, log_text=log)
        return st

    def cancel(self, handle: str) -> None:
        try:
            _run(["scancel", handle], "scancel")
        except LookupError:
            pass

    def logs(self, handle: str) -> str:
        return _read((self._scontrol(handle) or {}).get("StdOut"))


def _read(path: str | None) -> str:
    """A job's log file, or "" when it is not (or no longer) there."""
    try:
        return Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return ""
