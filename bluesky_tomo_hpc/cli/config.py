"""``bluesky-tomo-hpc config``: print the effective settings (defaults < file < environment)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="print the effective settings as YAML, or check a settings file",
        description="Print the settings in force after the file ($BLUESKY_TOMO_HPC_CONFIG or --config) "
                    "and BLUESKY_TOMO_HPC__SECTION__KEY environment overrides are applied. Secrets are "
                    "never printed: only the names of the variables that hold them.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..settings import load_settings

    settings = load_settings()  # an invalid one is reported by cli/main.py in one line
    yaml.safe_dump(settings.model_dump(mode="json"), sys.stdout, sort_keys=False)
    return 0
