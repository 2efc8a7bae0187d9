"""``bluesky-tomo-hpc serve``: the embedded Tiled server and the web page, in the foreground."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from .errors import writable_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the embedded Tiled server and the web page (127.0.0.1)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Serve the data folder's Tiled catalog (raw runs and reconstructions) on 127.0.0.1,\n"
            "with the web page at /web/ (live scan, scans and results, jobs, health). The API key\n"
            "is read from $TILED_API_KEY; when it is unset a random key is made and printed once.\n"
            "The page asks for the same key. Clients: tiled.client.from_uri(URI, api_key=KEY).\n"
            "With --tiled-uri, only the web page runs, beside that (site's own) Tiled server."
        ),
    )
    p.add_argument("--data-dir", type=Path, help="data folder (default: settings data_dir)")
    p.add_argument("--port", type=int, default=8000, help="TCP port on 127.0.0.1 (default 8000)")
    p.add_argument("--no-web", action="store_true", help="Tiled only, without the web page")
    p.add_argument("--tiled-uri", help="serve only the web page, reading this Tiled "
                                       "(e.g. https://tiled.example.org/api/v1)")
    p.add_argument("--preview", metavar="ADDRESS",
                   help="0MQ address of the live preview stream (default: settings preview.zmq_address)")
    p.add_argument("--preview-control", metavar="ADDRESS",
                   help="0MQ address where the page moves the running scan's slices "
                        "(default: settings preview.control_address)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..settings import load_settings

    settings = load_settings()
    if args.data_dir:
        settings = settings.model_copy(update={"data_dir": args.data_dir})
    data_dir = Path(settings.data_dir).resolve()
    key = os.environ.get(settings.tiled.api_key_env)
    if not key:
        key = secrets.token_hex(16)
        print(f"${settings.tiled.api_key_env} is not set; using a random key for this session:\n"
              f"  export {settings.tiled.api_key_env}={key}", file=sys.stderr)
    base = f"http://127.0.0.1:{args.port}"
    if args.tiled_uri:
        import uvicorn

        from ..untrusted.secrets_mask import mask_text, uvicorn_log_config
        from ..web.app import build_web_app, standalone_app
        from ..web.server import MOUNT, make_context

        ctx = make_context(settings, api_key=key, tiled_uri=args.tiled_uri, preview_address=args.preview,
                           control_address=args.preview_control)
        print(f"Web page: {base}{MOUNT}/  (reading Tiled at {mask_text(args.tiled_uri)})", file=sys.stderr)
        uvicorn.run(standalone_app(build_web_app(ctx), MOUNT), host="127.0.0.1", port=args.port,
                    log_config=uvicorn_log_config("info"))
        return 0

    from ..results.tiled_server import serve_forever

    writable_folder(data_dir / "tiled", "--data-dir")  # Tiled keeps its catalog and files there
    mounts = {}
    if not args.no_web:
        from ..web.app import build_web_app
        from ..web.server import MOUNT, make_context

        ctx = make_context(settings, api_key=key, tiled_uri=f"{base}/api/v1", preview_address=args.preview,
                           control_address=args.preview_control, data_folder=data_dir)
        mounts[MOUNT] = build_web_app(ctx)
        print(f"Web page: {base}{MOUNT}/", file=sys.stderr)
    print(f"Tiled: {base}/api/v1  (data in {data_dir / 'tiled'})", file=sys.stderr)
    serve_forever(data_dir / "tiled", api_key=key, port=args.port, readable_storage=[data_dir], mounts=mounts)
    return 0
