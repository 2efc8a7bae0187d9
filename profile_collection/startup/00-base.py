"""RunEngine and metadata for the tomography beamline.

Runs both under IPython (``ipython --profile-dir=profile_collection``) and in a bluesky queue
server worker, which executes these files without IPython: nothing here may need
``get_ipython()``; the IPython-only extras are guarded.
"""

import os

from bluesky import RunEngine
from bluesky.utils import ProgressBarManager

try:
    from bluesky_queueserver import is_re_worker_active
except ImportError:  # the queue server is not installed: plain IPython

    def is_re_worker_active() -> bool:
        return False


RE = RunEngine()
RE.md["beamline_id"] = os.environ.get("BEAMLINE_ID", "sim-tomo")
if os.environ.get("PROPOSAL_ID"):
    RE.md["proposal_id"] = os.environ["PROPOSAL_ID"]

if not is_re_worker_active():
    from IPython import get_ipython

    _ip = get_ipython()
    if _ip is not None:
        from bluesky.magics import BlueskyMagics

        _ip.register_magics(BlueskyMagics)
        if os.environ.get("BLUESKY_TOMO_PROGRESS", "1") != "0":
            RE.waiting_hook = ProgressBarManager()
    del _ip
