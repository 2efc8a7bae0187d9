"""``bluesky-tomo-hpc recover``: put into Tiled what it missed while it was down.

Replays the raw runs TiledWriter backed up to ``<data_dir>/tiled_backup`` (idempotent: a run
already complete in Tiled is left alone, a partial one is completed from its backup) and registers
the results spooled in ``<data_dir>/spool``. A live pipeline does the same every 30 s by itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  bluesky-tomo-hpc recover                       # Tiled from the settings (or the embedded one)
  bluesky-tomo-hpc recover --tiled-uri http://127.0.0.1:8000/api/v1
  bluesky-tomo-hpc recover --complete-unstopped  # also close runs whose stop was never written

Exit code 0 when everything went in (or nothing was waiting), 1 when something is still waiting
(Tiled unreachable or refusing): run it again later; nothing is removed until it is in Tiled.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "recover", help="register spooled results and replay raw-run backups into Tiled",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, help="data folder (default from the settings)")
    p.add_argument("--tiled-uri", help="Tiled server (default from the settings; none: embedded)")
    p.add_argument("--complete-unstopped", action="store_true",
                   help="close backed-up runs that have no stop document (marked aborted)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..results.recovery import TiledRecovery
    from ..results.spool import ResultSpool
    from ..results.tiled_results import processed_container
    from ..results.tiled_server import connect_or_embed, raw_catalog
    from ..settings import load_settings

    settings = load_settings()
    data_dir = (args.data_dir or Path(settings.data_dir)).resolve()
    uri = args.tiled_uri or settings.tiled.uri
    with connect_or_embed(uri, data_dir, api_key=settings.tiled.api_key) as (client, _server):
        recovery = TiledRecovery(
            ResultSpool(data_dir / "spool"), data_dir / "tiled_backup",
            raw=lambda: raw_catalog(client, settings.tiled.raw_container),
            processed=lambda: processed_container(client, settings.tiled.processed_container))
        report = recovery.run_once(complete_unstopped=args.complete_unstopped)
    for line in report.lines():
        print(line)
    return 0 if report.ok and not recovery.pending() else 1
