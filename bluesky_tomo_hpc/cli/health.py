"""``bluesky-tomo-hpc health``: one line per check, an exit code, ``--json`` for timers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "health",
        help="check Tiled, the journal, stuck jobs, executors, free space (exit 0/1/2)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Check what the pipeline needs: Tiled reachable with the API key, the job journal\n"
            "readable, no stuck jobs, the executor reachable with its credentials, free space in\n"
            "each data location. One line per check; exit code 0 (all ok), 1 (a warning),\n"
            "2 (a failure), for cron or a systemd timer. --json prints the same as JSON."
        ),
    )
    p.add_argument("--tiled-uri", help="Tiled to check (default: settings tiled.uri), e.g. "
                                       "http://127.0.0.1:8000/api/v1")
    p.add_argument("--location", type=Path, action="append", default=[],
                   help="another data location whose free space to check (repeatable)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..health.checks import exit_code, run_checks
    from ..settings import load_settings

    checks = run_checks(load_settings(), tiled_uri=args.tiled_uri, locations=args.location)
    code = exit_code(checks)
    if args.json:
        print(json.dumps({"exit_code": code, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        for c in checks:
            print(c.line())
    return code
