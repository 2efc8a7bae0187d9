"""``python -m bluesky_tomo_hpc.batch JOB.json``: the MPI batch program (see ``batch.batch_program``)."""

from __future__ import annotations

import sys

from .batch_program import main

if __name__ == "__main__":
    sys.exit(main())
