"""``bluesky-tomo-hpc``: the command line. Each subcommand lives in its own module with a
``register(subparsers)`` function, so this file only assembles them."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from typing import NoReturn

from ..untrusted.secrets_mask import MaskFilter, mask_text
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, describe

DESCRIPTION = """\
Automatic tomography reconstruction for Bluesky beamlines.

Every tomography scan a RunEngine takes is recognised from its documents, previewed live
(three orthogonal slices), reconstructed in full when it stops, optionally sent to HPC as an
MPI batch job, and the results are written to Tiled next to the raw run.
"""

EPILOG = """\
first steps:
  bluesky-tomo-hpc demo                 simulated scan -> preview -> batch job -> Tiled
  bluesky-tomo-hpc recon tooth.h5       reconstruct a data-exchange / NXtomo file
  bluesky-tomo-hpc serve                run the embedded Tiled server alone (127.0.0.1)

configuration: one YAML file named by $BLUESKY_TOMO_HPC_CONFIG (or --config), overridden by
variables BLUESKY_TOMO_HPC__SECTION__KEY=value; secrets (TILED_API_KEY, NERSC/Globus
credentials) only from the environment. Run 'bluesky-tomo-hpc SUBCOMMAND --help' for details.

errors: one line on stderr naming the problem and the fix; exit status 1 some work failed, 2 bad
command line/parameter/settings or a feature's package not installed, 3 bad input data, 4 output
not writable, 5 service unreachable, 70 internal error, 130 interrupted. --debug prints the
traceback too.
"""

#: subcommand modules in the order --help lists them
COMMANDS = ("demo", "recon", "serve", "worker", "watch", "jobs", "health", "reprocess", "recover", "config")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its default prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bluesky-tomo-hpc", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v info, -vv debug)")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error as well as its one-line message")
    parser.add_argument("--config", metavar="FILE",
                        help="settings file (YAML); default $BLUESKY_TOMO_HPC_CONFIG")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"bluesky_tomo_hpc.cli.{name}").register(sub)
    return parser


def _version() -> str:
    from bluesky_tomo_hpc import __version__

    return f"bluesky-tomo-hpc {__version__}"


def setup_logging(verbosity: int) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = RichHandler(console=Console(stderr=True), rich_tracebacks=True, show_path=False)
    handler.addFilter(MaskFilter())  # every library's records (httpx, tiled, uvicorn), secrets masked
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[handler])  # stdout stays for results
    logging.getLogger("bluesky_tomo_hpc").setLevel(min(level, logging.INFO if verbosity else logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    setup_logging(args.verbose)
    # --config reaches load_settings (and any process a command starts) through the variable;
    # restored afterwards, so that calling main() in-process leaves the environment as it was
    previous = os.environ.get("BLUESKY_TOMO_HPC_CONFIG")
    if args.config:
        os.environ["BLUESKY_TOMO_HPC_CONFIG"] = args.config
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place a command's error becomes a line and a code
        code, line = describe(exc)
        if args.debug:
            print(mask_text(traceback.format_exc()), file=sys.stderr, end="")
        print(f"bluesky-tomo-hpc {args.command}: {line}", file=sys.stderr)
        return code
    finally:
        if args.config:
            if previous is None:
                os.environ.pop("BLUESKY_TOMO_HPC_CONFIG", None)
            else:
                os.environ["BLUESKY_TOMO_HPC_CONFIG"] = previous


if __name__ == "__main__":
    sys.exit(main())
