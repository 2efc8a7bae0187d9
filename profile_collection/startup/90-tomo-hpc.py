"""Automatic reconstruction of every tomography scan: the two lines a beamline adds.

``configure`` subscribes bluesky-tiled-plugins' TiledWriter (raw runs) and the tomography
callback (live preview, full volume at stop, batch job when ``jobs.executor`` asks) to ``RE``.
Settings come from ``$BLUESKY_TOMO_HPC_CONFIG`` and ``BLUESKY_TOMO_HPC__*`` variables; secrets
(``TILED_API_KEY``, NERSC / Globus credentials) only from the environment, never from a file in
this profile.
"""

import atexit

import bluesky_tomo_hpc

tomo = bluesky_tomo_hpc.configure(RE, settings)  # noqa: F821  (RE: 00-base.py, settings: 10-devices.py)
atexit.register(tomo.close)

# To reconstruct in a separate streaming worker instead (another core, host or GPU node), publish
# the documents over 0MQ in msgpack, never bluesky's pickle default, on 127.0.0.1 only (see
# docs/how-to/streaming-worker.md for SSH tunnels and CURVE keys):
#   from bluesky_tomo_hpc.sources.zmq_documents import document_publisher
#   RE.subscribe(document_publisher("tcp://127.0.0.1:5577"))
