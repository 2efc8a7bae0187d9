"""What comes from outside and what goes outside: the rules every part of the package follows.

* :mod:`.outside_files`: a file or folder named from outside (a sample library entry, a settings
  or parameters file, an HDF5 link) is resolved, kept inside its folder, read with bounds, and
  never echoed into a message.
* :mod:`.secrets_mask`: secrets (passwords in URIs, API keys, tokens) are masked in everything
  written: messages, logs, JSON answers, provenance, job records, SciCat payloads.

Names from outside that become file names are :func:`bluesky_tomo_hpc.model.safe_component` /
:func:`~bluesky_tomo_hpc.model.path_inside` (the stream's model, one layer below).
"""
