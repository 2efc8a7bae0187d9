#!/usr/bin/env python3
"""Service: live preview + full volume from areaDetector frames over EPICS PV Access (pvapy).

    detector --PVA plugin (NTNDArray)--> this service (PvaSource) --> preview (0MQ, files, Tiled)

Usage (settings from $BLUESKY_TOMO_HPC_CONFIG; every `bluesky-tomo-hpc worker` option works):
    tomo_worker_pva.py 13SIM1:Pva1:Image --angle-pv 13BMD:rot.RBV --kind-attribute image_key \\
        --n-projections 1969 --preview-zmq tcp://127.0.0.1:5600
Frame kind and angle come from NDArray attributes (frame_type / rotation_angle by default) or
from companion PVs; a scan ends at --n-projections, a new scan_uid attribute, or --idle-timeout.
"""

import sys

from bluesky_tomo_hpc.cli.main import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    sys.exit(main(["worker", "--pva", *sys.argv[1:]]))
