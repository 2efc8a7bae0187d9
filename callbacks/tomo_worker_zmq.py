#!/usr/bin/env python3
"""Service: live preview + full volume for every tomography run a RunEngine publishes over 0MQ.

    RunEngine --Publisher--> bluesky-0MQ-proxy --> this service (RemoteDispatcher + TomoRunRouter)

Usage (settings from $BLUESKY_TOMO_HPC_CONFIG; every `bluesky-tomo-hpc worker` option works):
    tomo_worker_zmq.py tcp://127.0.0.1:5578 --preview-zmq tcp://127.0.0.1:5600 --journal /var/tmp/tomo
On the RunEngine side:
    from bluesky.callbacks.zmq import Publisher; RE.subscribe(Publisher("tcp://127.0.0.1:5577"))
Run it under a supervisor (systemd, procServ) with --journal so a restart finishes open scans.
"""

import sys

from bluesky_tomo_hpc.cli.main import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    sys.exit(main(["worker", "--zmq", *sys.argv[1:]]))
