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

    from ..engine.memory import describe_budget
    from ..settings import load_settings
    from ..untrusted.secrets_mask import mask_secrets

    settings = load_settings()  # an invalid one is reported by cli/main.py in one line
    budget, source = describe_budget(settings.memory_budget_mb)
    # secrets are read from the environment only, but a URI may still carry user:password@
    yaml.safe_dump(mask_secrets(settings.model_dump(mode="json")), sys.stdout, sort_keys=False)
    # what every path that streams a scan in slabs may use (full volume, recon, batch ranks...)
    yaml.safe_dump({"effective": {"memory_budget": {"bytes": budget, "mib": round(budget / 2**20, 1),
                                                    "from": source}}}, sys.stdout, sort_keys=False)
    return 0
