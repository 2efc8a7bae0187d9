"""``bluesky-tomo-hpc reprocess``: re-reconstruct a catalog's tomography runs with new parameters."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import EXIT_SERVICE, CliError


def _scan_range(text: str) -> tuple[int, int]:
    try:
        first, _, last = text.partition(":")
        return int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"scan id range must look like 10:20 or 15, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reprocess",
        help="re-reconstruct the tomography runs of a Tiled/Databroker catalog",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Find the tomography runs of a catalog that match a query, skip those already\n"
            "reconstructed with the same parameters (hash), and reconstruct the rest here or\n"
            "submit them as batch jobs. Safe to interrupt and run again: finished runs are skipped."
        ),
        epilog=(
            "examples:\n"
            "  bluesky-tomo-hpc reprocess http://127.0.0.1:8000/api/v1 --scan-ids 10:20 --params p.yml\n"
            "  bluesky-tomo-hpc reprocess URI --plan tomo_scan --since 2026-11-01 --executor slurm\n"
            "The API key is read from $TILED_API_KEY (or the variable named in the settings)."
        ),
    )
    p.add_argument("catalog_uri", metavar="CATALOG_URI", help="Tiled server URI (…/api/v1)")
    p.add_argument("--raw", help="container of raw runs (default: settings tiled.raw_container)")
    p.add_argument("--processed", help="container for results (default: settings tiled.processed_container)")
    p.add_argument("--params", type=Path, metavar="FILE",
                   help="ReconParams as YAML/JSON (unknown keys are refused); default: settings recon")
    p.add_argument("--scan-ids", type=_scan_range, metavar="FIRST:LAST", help="inclusive scan_id range")
    p.add_argument("--since", help="start time lower bound, e.g. 2026-11-01")
    p.add_argument("--until", help="start time upper bound")
    p.add_argument("--plan", dest="plan_name", help="plan_name, e.g. tomo_scan")
    p.add_argument("--sample", help="sample name: start['sample']['name'] (or a bare-string start['sample'])")
    p.add_argument("--series", help="time series id: start['series']['id']")
    p.add_argument("--where", action="append", default=[], metavar="KEY<op>VALUE",
                   help="start-document criterion, op one of = != > >= < <=, e.g. "
                        "sample.conditions.temperature.si_value>500 (kelvin); repeatable")
    p.add_argument("--uid", dest="uids", action="append", default=[], help="(partial) run uid; repeatable")
    p.add_argument("--executor", default="inprocess",
                   choices=["inprocess", "local", "slurm", "nersc", "alcf"],
                   help="inprocess: reconstruct here (default); others: submit batch jobs")
    p.add_argument("--dry-run", action="store_true", help="list what would be done, do nothing")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="reconstruct runs without a stop document from the frames they have "
                        "(default: report them as incomplete and go on)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..engine.params import ReconParams
    from ..live.catalog_replay import (
        NOT_A_RUN,
        ReprocessError,
        RunQuery,
        already_reconstructed,
        reprocess,
        tomography_runs,
    )
    from ..metadata.queries import QueryError, parse_where
    from ..results.tiled_results import processed_container
    from ..settings import load_settings

    console = Console(stderr=True)
    settings = load_settings()  # invalid settings or parameters: one line from cli/main.py
    params = ReconParams.from_file(args.params) if args.params else settings.recon
    try:
        where = tuple(parse_where(w) for w in args.where)
    except QueryError as exc:
        console.print(f"[red]invalid --where:[/red] {exc}")
        return 2
    try:
        from tiled.client import from_uri

        client = from_uri(args.catalog_uri, api_key=settings.tiled.api_key)
        raw = client[args.raw or settings.tiled.raw_container]
    except Exception as exc:
        raise CliError(f"cannot open catalog {args.catalog_uri}: {type(exc).__name__}: {exc}; is the "
                       "Tiled server running, and are the URI and the API key right?", EXIT_SERVICE) from exc
    query = RunQuery(scan_ids=args.scan_ids, since=args.since, until=args.until,
                     plan_name=args.plan_name, sample=args.sample, uids=tuple(args.uids),
                     series=args.series, where=where)
    processed = processed_container(client, args.processed or settings.tiled.processed_container)
    if args.dry_run:
        found = 0
        for uid, r, layout in tomography_runs(raw, query):
            found += 1
            if layout == NOT_A_RUN:
                print(f"{uid[:8]}: not a run")
                continue
            done = already_reconstructed(processed, uid, params)
            what = "not tomography" if layout is None else ("done" if done else "to do")
            print(f"{uid[:8]} scan {r.metadata['start'].get('scan_id')}: {what}")
        if not found:
            raise CliError(f"no run matches {query.describe()}; widen the query (see --help)")
        return 0

    submit = monitor = None
    if args.executor != "inprocess":
        from ..batch.job import Resources
        from ..jobs.factory import make_monitor
        from ..live.catalog_replay import batch_submitter

        settings = settings.model_copy(update={"jobs": settings.jobs.model_copy(
            update={"executor": args.executor})})
        monitor = make_monitor(settings, tiled=processed)
        submit = batch_submitter(monitor, settings.data_dir / "jobs", params, args.executor, raw,
                                 resources=Resources(ranks=settings.jobs.ranks or 1))
    console.print(f"re-processing {query.describe()} with params {params.params_hash}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("runs", total=None)

        def progress(done: int, total: int, uid: str) -> None:
            bar.update(task, completed=done, total=total, description=f"run {uid[:8]}")

        try:
            summary = reprocess(raw, processed, params=params, query=query, submit=submit,
                                progress=progress, settings=settings,
                                allow_incomplete=args.allow_incomplete)
        except ReprocessError as exc:
            raise CliError(f"{exc}; widen the query (see --help)") from exc
    for line in summary.lines():
        print(line)
    if monitor is not None:
        print(f"batch jobs are followed by the journal {settings.journal_path}: "
              "bluesky-tomo-hpc jobs list / follow")
        monitor.stop()
    if summary.count("reconstructed") + summary.count("submitted") == 0 and summary.count("failed") == 0:
        print("nothing to do: every matching tomography run is already reconstructed with these parameters")
    return 1 if summary.count("failed") or summary.count("incomplete") else 0
