"""``bluesky-tomo-hpc jobs``: list, follow, cancel batch jobs, and per-stage statistics.

Everything comes from the journal (``Settings.journal_path`` or ``--journal``), so this works from
any shell, whichever session submitted the jobs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .errors import CliError, one_line


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "jobs",
        help="list, follow, cancel batch jobs; per-stage statistics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--journal", type=Path, help="journal file (default: from the settings)")
    sub = p.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="jobs with their state (active ones unless --all)")
    ls.add_argument("--all", action="store_true", help="include finished, failed and cancelled jobs")
    fo = sub.add_parser("follow", help="follow jobs until they end: retries, Tiled registration")
    fo.add_argument("job_id", nargs="?", help="one job (default: every active job)")
    fo.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    fo.add_argument("--poll", type=float, default=2.0, help="seconds between looks")
    ca = sub.add_parser("cancel", help="cancel a job here and where it runs")
    ca.add_argument("job_id")
    st = sub.add_parser("stats", help="per-stage durations: N, mean +/- sd, median, range")
    st.add_argument("--executor", help="only jobs of this executor")
    p.set_defaults(func=run)


def _journal(args: argparse.Namespace) -> Any:
    from ..jobs.journal import Journal

    if args.journal is not None:
        return Journal(args.journal)
    from ..settings import load_settings

    return Journal(load_settings().journal_path)


def _monitor(journal: Any, poll: float) -> Any:
    """A monitor with an executor for every executor name the journal's active jobs use."""
    from ..jobs.executors import make_executor
    from ..jobs.monitor import JobMonitor
    from ..results.batch_registration import tiled_container
    from ..settings import load_settings

    settings = load_settings()
    names = {r.executor for r in journal.jobs(active_only=True)} | {settings.jobs.executor}
    names.discard("none")
    executors = {
        n: make_executor(n, settings.jobs.options if n == settings.jobs.executor else {}) for n in names
    }
    tiled = (
        tiled_container(settings.tiled.uri, settings.tiled.api_key, settings.tiled.processed_container)
        if settings.tiled.uri
        else None
    )
    return JobMonitor(journal, executors, tiled=tiled, max_retries=settings.jobs.max_retries, poll_s=poll)


def _row(r: Any) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.updated))
    extra = one_line(r.error or r.tiled_node or "")
    run = one_line(r.run_uid)[:20]  # a uid from outside: no terminal escapes reach the screen
    return (
        f"{r.job_id:<14}{r.state:<12}{r.executor:<8}{r.attempts:<4}{when:<21}{run:<21}"
        f"{r.params_hash:<18}{extra[:80]}"
    )


def _require_job(journal: Any, job_id: str) -> None:
    from ..jobs.journal import JournalError

    try:
        journal.get(job_id)
    except JournalError:
        raise CliError(f"no job {job_id!r} in the journal {journal.path}; "
                       "'bluesky-tomo-hpc jobs list --all' shows the job ids") from None


def run(args: argparse.Namespace) -> int:
    journal = _journal(args)
    if getattr(args, "job_id", None):
        _require_job(journal, args.job_id)
    if args.jobs_command == "list":
        recs = journal.jobs(active_only=not args.all)
        print(f"{'JOB':<14}{'STATE':<12}{'EXEC':<8}{'TRY':<4}{'UPDATED':<21}{'RUN':<21}{'PARAMS':<18}DETAIL")
        for r in recs:
            print(_row(r))
        if not recs:
            print("(no jobs)" if args.all else "(no active jobs; --all shows finished ones)")
        return 0
    if args.jobs_command == "stats":
        from ..jobs.journal import stage_statistics

        stats = stage_statistics(journal, executor=args.executor)
        if not stats:
            print("no job has finished a stage yet")
        for s in stats:
            print(s.format())
        return 0
    if args.jobs_command == "cancel":
        mon = _monitor(journal, 1.0)
        rec = mon.cancel(args.job_id)
        print(_row(rec))
        return 0 if rec.state == "CANCELLED" else 1
    if args.jobs_command == "follow":
        mon = _monitor(journal, args.poll)
        ids = [args.job_id] if args.job_id else [r.job_id for r in journal.jobs(active_only=True)]
        seen: dict[str, str] = {}
        deadline = time.monotonic() + args.timeout
        while ids:
            mon.step()
            for jid in list(ids):
                r = journal.get(jid)
                if seen.get(jid) != r.state:
                    seen[jid] = r.state
                    print(_row(r), flush=True)
                if r.terminal:
                    ids.remove(jid)
            if ids and time.monotonic() > deadline:
                print(f"still running after {args.timeout} s: {', '.join(ids)}")
                return 2
            if ids:
                time.sleep(args.poll)
        failed = [j for j, s in seen.items() if s in ("FAILED", "CANCELLED")]
        return 1 if failed else 0
    raise SystemExit(f"unknown jobs action {args.jobs_command!r}")
