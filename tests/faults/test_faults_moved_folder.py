"""A data folder moved or restored elsewhere: the volumes registered in place, the raw files and
Tiled's own arrays are read at the new path (the embedded catalog follows its folder, see
``results/catalog_relocation.py``). Real embedded Tiled server, stopped, moved, started again."""

from __future__ import annotations

import os
import shutil

import httpx
import numpy as np
import pytest
import zarr

from bluesky_tomo_hpc.results.missing_data import MISSING_DATA_STATUS
from bluesky_tomo_hpc.results.tiled_results import register_zarr_in_place
from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer


def test_a_moved_data_folder_still_serves_what_it_registered(world):
    """Data folder moved: registered and uploaded arrays read at the new path; a missing file: one line.

    Data folder moved: the volume registered in place and Tiled's own arrays read at the new path; a volume
    registered from another disk that is gone answers at once (HTTP 424, not a retried 500) with one line
    naming its node and the missing path.
    """
    volume = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    zpath = world.data / "volumes" / "run" / "result" / "volume.ome.zarr" / "0"
    other = world.input("other-disk") / "volume.ome.zarr" / "0"  # outside the data folder
    for path in (zpath, other):
        zarr.open_array(str(path), mode="w", shape=volume.shape, chunks=(2, 6, 8), dtype="float32")[:] = \
            volume
    with EmbeddedTiledServer(world.data / "tiled",
                             readable_storage=[world.data, other.parent.parent]) as server:
        processed = server.client().create_container("processed")
        register_zarr_in_place(processed, "volume", zpath)
        register_zarr_in_place(processed, "elsewhere", other)
        processed.write_array(np.full((3, 3), 7.0), key="uploaded")
    restored = world.input("restored-elsewhere")
    os.rename(world.data, restored)
    shutil.rmtree(other.parent.parent)  # the other disk is gone: nothing can follow it
    with EmbeddedTiledServer(restored / "tiled", readable_storage=[restored, other.parent.parent]) as server:
        processed = server.client()["processed"]
        np.testing.assert_array_equal(processed["volume"].read(), volume)
        assert float(processed["uploaded"].read().sum()) == 63.0
        with pytest.raises(httpx.HTTPStatusError) as gone:
            processed["elsewhere"].read()
        assert gone.value.response.status_code == MISSING_DATA_STATUS, gone.value
        line = gone.value.response.json()["detail"]
        assert "node 'processed/elsewhere' cannot be read" in line and str(other) in line, line
        assert "\n" not in line
