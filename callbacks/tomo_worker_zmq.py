#!/usr/bin/env python3
"""Service: live preview + full volume for every tomography run a RunEngine publishes over 0MQ.

    RunEngine --Publisher--> bluesky-0MQ-proxy --> this service (RemoteDispatcher + TomoRunRouter)

Usage (settings from $BLUESKY_TOMO_HPC_CONFIG; every `bluesky-tomo-hpc worker` option works):
    tomo_worker_zmq.py tcp://127.0.0.1:5578 --preview-zmq tcp://127.0.0.1:5600 --journal /var/tmp/tomo
On the RunEngine side (msgpack, never bluesky's pickle default; addresses on 127.0.0.1, see
docs/how-to/streaming-worker.md for SSH tunnels and CURVE keys):
    from bluesky_tomo_hpc.sources.zmq_documents import document_publisher
    RE.subscribe(document_publisher("tcp://127.0.0.1:5577"))
and the proxy: bluesky-0MQ-proxy --in-address tcp://127.0.0.1:5577 --out-address tcp://127.0.0.1:5578
Run it under a supervisor (systemd, procServ) with --journal so a restart finishes open scans.
"""

import sys

from bluesky_tomo_hpc.cli.main import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    sys.exit(main(["worker", "--zmq", *sys.argv[1:]]))
