"""Is everything the pipeline needs working? One :class:`Check` per question, for cron and the web page.

``bluesky-tomo-hpc health`` prints one line per check and exits 0 (all ok), 1 (a warning) or 2
(a failure), so a systemd timer or cron job every 12-24 hours (as the ALS runs such checks) can
alert on it; ``--json`` gives the same as JSON. The web page's Health panel shows the same list.

Checks: Tiled reachable (and the key accepted), the job journal readable, stuck jobs, each
executor reachable with credentials present, free space in each data location.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ..extras import MissingPackage, installed
from ..untrusted.secrets_mask import mask_text

Status = Literal["ok", "warn", "fail"]
EXIT_CODES = {"ok": 0, "warn": 1, "fail": 2}

#: a job in a non-running active state unchanged for this long is reported as stuck
STUCK_IDLE_S = 3600.0
#: slack beyond a running job's own wall time before it counts as stuck
STUCK_RUN_SLACK_S = 600.0


@dataclass(frozen=True)
class Check:
    """The answer to one health question."""

    name: str
    status: Status
    message: str

    def line(self) -> str:
        return f"{self.status.upper():<5} {self.name:<22} {mask_text(self.message)}"

    def as_dict(self) -> dict[str, str]:
        """The check as JSON-able data (secrets a message quotes, such as a URI's password, masked)."""
        return {**asdict(self), "message": mask_text(self.message)}


def exit_code(checks: Iterable[Check]) -> int:
    """0 when every check is ok, 1 when the worst is a warning, 2 when one failed."""
    return max((EXIT_CODES[c.status] for c in checks), default=0)


def check_tiled(uri: str | None, api_key: str | None, *, timeout_s: float = 5.0) -> Check:
    """Tiled answers ``/healthz`` and accepts the API key (its root metadata needs the key)."""
    import httpx

    if not uri:
        return Check("tiled", "warn", "no Tiled URI configured (embedded server: pass --tiled-uri "
                                      "of the running 'bluesky-tomo-hpc serve')")
    url = httpx.URL(uri)
    api_key = api_key or url.params.get("api_key")  # a URI such as Tiled prints it, key included
    api = str(url.copy_with(query=None)).rstrip("/")
    base = api[: -len("/api/v1")] if api.endswith("/api/v1") else api
    headers = {"Authorization": f"Apikey {api_key}"} if api_key else {}
    try:
        with httpx.Client(trust_env=False, timeout=timeout_s) as http:
            if http.get(f"{base}/healthz").status_code != 200:
                return Check("tiled", "fail", f"{base}/healthz did not answer 200")
            r = http.get(f"{base}/api/v1/metadata/", headers=headers)
    except httpx.HTTPError as exc:
        return Check("tiled", "fail", f"{base} unreachable: {exc.__class__.__name__}: {exc}")
    if r.status_code in (401, 403):
        return Check("tiled", "fail", f"{base} refused the API key (HTTP {r.status_code})")
    if r.status_code != 200:
        return Check("tiled", "fail", f"{base}/api/v1/metadata/ answered HTTP {r.status_code}")
    return Check("tiled", "ok", f"{base} reachable, key accepted")


def check_journal(path: Path) -> Check:
    """The journal opens and lists its jobs."""
    from ..jobs.journal import Journal

    if not Path(path).exists():  # a fresh install: the first job creates it
        return Check("journal", "ok", f"{path} not there yet: no job submitted (the first job creates it)")
    try:
        journal = Journal(path)
        jobs = journal.jobs()
    except Exception as exc:
        return Check("journal", "fail", f"{path} unreadable: {exc}")
    if journal.incidents:  # corrupt or emptied: the journal kept it aside and started afresh
        return Check("journal", "fail", f"{path}: {journal.incidents[-1]}")
    active = sum(1 for j in jobs if not j.terminal)
    return Check("journal", "ok", f"{path}: {len(jobs)} jobs, {active} active")


def stuck_jobs(records: Iterable[Any], now: float | None = None) -> list[tuple[str, str]]:
    """(job id, why) of active jobs that no longer move: running past their wall time plus
    slack, or in another active state unchanged for :data:`STUCK_IDLE_S`."""
    now = time.time() if now is None else now
    out = []
    for r in records:
        if r.terminal:
            continue
        age = now - r.updated
        if r.state == "RUNNING":
            limit = r.job.resources.walltime_s + STUCK_RUN_SLACK_S
            if age > limit:
                out.append((r.job_id, f"RUNNING for {age / 60:.0f} min, wall time {limit / 60:.0f} min"))
        elif r.state == "RETRY_WAIT" and r.next_try is not None:
            if now - r.next_try > STUCK_IDLE_S:
                late = (now - r.next_try) / 60
                out.append((r.job_id, f"retry due {late:.0f} min ago: is a monitor running?"))
        elif age > STUCK_IDLE_S:
            out.append((r.job_id, f"{r.state} unchanged for {age / 60:.0f} min"))
    return out


def check_stuck_jobs(path: Path, now: float | None = None) -> Check:
    from ..jobs.journal import Journal

    if not Path(path).exists():
        return Check("stuck jobs", "ok", "no journal, no jobs")
    try:
        stuck = stuck_jobs(Journal(path).jobs(active_only=True), now)
    except Exception as exc:
        return Check("stuck jobs", "fail", f"journal unreadable: {exc}")
    if not stuck:
        return Check("stuck jobs", "ok", "none")
    return Check("stuck jobs", "warn", "; ".join(f"{j}: {why}" for j, why in stuck[:5])
                 + (f" (+{len(stuck) - 5} more)" if len(stuck) > 5 else ""))


def _run_quietly(args: Sequence[str], timeout_s: float) -> tuple[int, str]:
    try:
        p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, str(exc)
    lines = (p.stdout if p.returncode == 0 else p.stderr or p.stdout).strip().splitlines()
    return p.returncode, lines[0] if p.returncode == 0 and lines else (lines[-1] if lines else "")


def _key_file_check(name: str, variable: str) -> Check:
    """A credential file named by ``variable``: present, readable, private, and its age (SFAPI
    clients and Globus tokens are issued for a limited time; the files do not say until when)."""
    value = os.environ.get(variable)
    if not value:
        return Check(f"executor {name}", "fail", f"${variable} is not set")
    path = Path(value)
    if not path.is_file():
        return Check(f"executor {name}", "fail", f"${variable} names {path}, which is not a file")
    age_days = (time.time() - path.stat().st_mtime) / 86400
    if path.stat().st_mode & 0o077:
        return Check(f"executor {name}", "warn", f"{path} is readable by others (chmod 600)")
    status: Status = "warn" if age_days > 25 else "ok"
    return Check(f"executor {name}", status, f"credentials {path} present, {age_days:.0f} days old"
                 + (" (SFAPI clients expire after 30 days: renew soon)" if status == "warn" else ""))


def _sdk_check(name: str, module: str, feature: str) -> Check | None:
    """A failed check naming the extra when ``module`` is not installed; else ``None``."""
    if installed(module):
        return None
    return Check(f"executor {name}", "fail", str(MissingPackage(feature, module)))


def check_executor(name: str, options: dict[str, Any] | None = None) -> Check:
    """Can jobs be sent to ``name``? The launcher or scheduler answers, or the credentials exist."""
    options = dict(options or {})
    if name == "none":
        return Check("executor", "ok", "no batch jobs configured")
    if name == "local":
        from ..jobs.executors.mpiexec import LOCAL_MPI_FEATURE, find_mpiexec

        found = find_mpiexec()
        if found:
            return Check("executor local", "ok", f"mpiexec at {found}")
        return Check("executor local", "fail", str(MissingPackage(LOCAL_MPI_FEATURE, "mpiexec")))
    if name == "slurm":
        if shutil.which("sinfo") is None:
            return Check("executor slurm", "fail", "sinfo not on PATH (Slurm client tools missing)")
        rc, out = _run_quietly(["sinfo", "-h", "-o", "%P %a"], 10.0)
        if rc != 0:
            return Check("executor slurm", "fail", f"sinfo failed: {out}")
        return Check("executor slurm", "ok", f"controller answers: {out or 'no partitions'}")
    if name == "nersc":
        from ..jobs.executors.nersc import NERSC_FEATURE

        missing = _sdk_check("nersc", "sfapi_client", NERSC_FEATURE)
        return missing or _key_file_check("nersc", "NERSC_SFAPI_KEY")
    if name == "alcf":
        from ..jobs.executors.alcf import ALCF_FEATURE

        if missing := _sdk_check("alcf", "globus_compute_sdk", ALCF_FEATURE):
            return missing
        if not (options.get("endpoint_id") or os.environ.get("GLOBUS_COMPUTE_ENDPOINT")):
            return Check("executor alcf", "fail", "no endpoint: set $GLOBUS_COMPUTE_ENDPOINT")
        user_dir = os.environ.get("GLOBUS_COMPUTE_USER_DIR", Path.home() / ".globus_compute")
        tokens = Path(user_dir) / "storage.db"
        if not tokens.is_file() and not os.environ.get("GLOBUS_COMPUTE_CLIENT_SECRET"):
            return Check("executor alcf", "fail", f"no Globus Compute login ({tokens} missing, "
                                                  "$GLOBUS_COMPUTE_CLIENT_SECRET unset)")
        return Check("executor alcf", "ok", "endpoint and Globus credentials present")
    return Check(f"executor {name}", "fail", f"unknown executor {name!r}")


def check_free_space(location: Path, *, warn_fraction: float = 0.10, fail_bytes: int = 1 << 30) -> Check:
    """Free space where data are written: fail under 1 GiB, warn under 10 %."""
    location = Path(location)
    probe = location
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        return Check(f"space {location}", "fail", f"cannot stat: {exc}")
    frac = usage.free / usage.total if usage.total else 0.0
    msg = f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB ({100 * frac:.0f} %)"
    status: Status = "fail" if usage.free < fail_bytes else "warn" if frac < warn_fraction else "ok"
    return Check(f"space {location}", status, msg)


def run_checks(settings: Any, *, tiled_uri: str | None = None, api_key: str | None = None,
               locations: Sequence[Path] = ()) -> list[Check]:
    """Every check for one pipeline's settings (``tiled_uri`` overrides the settings' URI)."""
    data_dir = Path(settings.data_dir).resolve()
    uri = tiled_uri or settings.tiled.uri
    checks = [check_tiled(uri, api_key if api_key is not None else settings.tiled.api_key),
              check_journal(settings.journal_path), check_stuck_jobs(settings.journal_path),
              check_executor(settings.jobs.executor, settings.jobs.options)]
    seen: set[Path] = set()
    for loc in [data_dir, *locations]:
        loc = Path(loc).resolve()
        if loc not in seen:
            seen.add(loc)
            checks.append(check_free_space(loc))
    return checks
