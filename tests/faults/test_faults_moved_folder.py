"""A data folder moved or restored elsewhere: the volumes registered in place, the raw files and
Tiled's own arrays are read at the new path (the embedded catalog follows its folder, see
``results/catalog_relocation.py``). Real embedded Tiled server, stopped, moved, started again."""

from __future__ import annotations

import os

import numpy as np
import zarr

from bluesky_tomo_hpc.results.tiled_results import register_zarr_in_place
from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer


def test_a_moved_data_folder_still_serves_what_it_registered(world):
    """Data folder moved: the volume registered in place and Tiled's own arrays read at the new path."""
    volume = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    zpath = world.data / "volumes" / "run" / "result" / "volume.ome.zarr" / "0"
    zarr.open_array(str(zpath), mode="w", shape=volume.shape, chunks=(2, 6, 8), dtype="float32")[:] = volume
    with EmbeddedTiledServer(world.data / "tiled", readable_storage=[world.data]) as server:
        processed = server.client().create_container("processed")
        register_zarr_in_place(processed, "volume", zpath)
        processed.write_array(np.full((3, 3), 7.0), key="uploaded")
    restored = world.input("restored-elsewhere")
    os.rename(world.data, restored)
    with EmbeddedTiledServer(restored / "tiled", readable_storage=[restored]) as server:
        processed = server.client()["processed"]
        np.testing.assert_array_equal(processed["volume"].read(), volume)
        assert float(processed["uploaded"].read().sum()) == 63.0
