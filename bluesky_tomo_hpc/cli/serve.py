"""``bluesky-tomo-hpc serve``: the embedded Tiled server on its own, in the foreground."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the embedded Tiled server alone (127.0.0.1)",
        description=(
            "Serve the data folder's Tiled catalog (raw runs and reconstructions) on 127.0.0.1. "
            "The API key is read from $TILED_API_KEY; when it is unset a random key is made and "
            "printed once. Clients: tiled.client.from_uri(URI, api_key=KEY)."
        ),
    )
    p.add_argument("--data-dir", type=Path, help="data folder (default: settings data_dir)")
    p.add_argument("--port", type=int, default=8000, help="TCP port on 127.0.0.1 (default 8000)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..results.tiled_server import serve_forever
    from ..settings import load_settings

    settings = load_settings()
    data_dir = (args.data_dir or settings.data_dir).resolve()
    key = os.environ.get(settings.tiled.api_key_env)
    if not key:
        key = secrets.token_hex(16)
        print(f"${settings.tiled.api_key_env} is not set; using a random key for this session:\n"
              f"  export {settings.tiled.api_key_env}={key}", file=sys.stderr)
    print(f"Tiled: http://127.0.0.1:{args.port}/api/v1  (data in {data_dir / 'tiled'})", file=sys.stderr)
    serve_forever(data_dir / "tiled", api_key=key, port=args.port, readable_storage=[data_dir])
    return 0
