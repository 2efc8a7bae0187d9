"""Reconstructions written to a real Tiled server and read back, in process and from another one."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from bluesky_tomo_hpc import ReconParams
from bluesky_tomo_hpc.results.pictures import save_orthoslices_png
from bluesky_tomo_hpc.results.tiled_results import (
    find_reconstructions,
    latest_reconstruction,
    preview_slices,
    processed_container,
    recon_key,
    runs_without_reconstruction,
    write_reconstruction,
)
from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer, raw_catalog


@pytest.fixture
def volume():
    rng = np.random.default_rng(1)
    return rng.random((20, 24, 24), dtype=np.float32)


def test_write_find_replace(tiled_client, volume):
    processed = processed_container(tiled_client)
    params = ReconParams(filter_name="hann")
    node = write_reconstruction(processed, raw_uid="run-a", params=params, volume=volume,
                                metadata={"center": np.float64(11.5)}, kind="full")
    assert node.metadata["raw_uid"] == "run-a"
    assert node.metadata["params_hash"] == params.params_hash
    assert node.metadata["center"] == 11.5
    assert "TomoReconstruction" in [s.name for s in node.specs]
    # slabs upload chunk-aligned and read back lazily
    assert node["volume"].chunks[0] == (16, 4)
    np.testing.assert_allclose(node["volume"][3:5, 2:4, :], volume[3:5, 2:4, :])
    for name, ref in preview_slices(volume).items():
        np.testing.assert_allclose(node[f"preview_{name}"].read(), ref)
    # same run + params + kind replaces (idempotent retries); another params hash adds
    write_reconstruction(processed, raw_uid="run-a", params=params, volume=volume * 2, kind="full")
    other = ReconParams(filter_name="ramp")
    write_reconstruction(processed, raw_uid="run-a", params=other, volume=volume, kind="full")
    found = find_reconstructions(processed, raw_uid="run-a")
    assert len(found) == 2
    same = find_reconstructions(processed, raw_uid="run-a", params_hash=params.params_hash)
    assert len(same) == 1
    np.testing.assert_allclose(same[0]["volume"][0], 2 * volume[0])
    assert latest_reconstruction(processed, "run-a").metadata["params_hash"] == other.params_hash
    assert runs_without_reconstruction(processed, ["run-a", "run-b"]) == ["run-b"]
    assert recon_key("run-a", params.params_hash, "full") in processed


def test_zarr_registered_in_place_and_uploaded_when_unreadable(tmp_path, tiled_client, volume):
    zpath = tmp_path / "vol.zarr"  # tmp_path is in the server's readable_storage
    z = zarr.open_array(str(zpath), mode="w", shape=volume.shape, chunks=(8, 24, 24), dtype="f4")
    z[:] = volume
    processed = processed_container(tiled_client)
    node = write_reconstruction(processed, raw_uid="run-z", params=ReconParams(), volume_zarr=zpath,
                                kind="batch", register_in_place=True)
    sources = node["volume"].data_sources()
    assert sources[0].management == "external"
    np.testing.assert_allclose(node["volume"].read(), volume)

    # for a server that cannot read the folder, the volume is uploaded
    with EmbeddedTiledServer(tmp_path / "other", readable_storage=[]) as server:
        p2 = processed_container(server.client())
        node2 = write_reconstruction(p2, raw_uid="run-z", params=ReconParams(), volume_zarr=zpath,
                                     kind="batch", register_in_place=False)
        assert node2["volume"].data_sources()[0].management != "external"
        np.testing.assert_allclose(node2["volume"][5], volume[5])


def test_read_from_another_process(tmp_path, volume):
    with EmbeddedTiledServer(tmp_path / "srv") as server:
        client = server.client()
        assert type(raw_catalog(client)).__name__ == "CatalogOfBlueskyRuns"
        write_reconstruction(processed_container(client), raw_uid="uid-x", params=ReconParams(),
                             volume=volume)
        code = (
            "import json, sys; from tiled.client import from_uri; from tiled.queries import Key\n"
            "c = from_uri(sys.argv[1], api_key=sys.argv[2])\n"
            "res = c['processed'].search(Key('raw_uid') == 'uid-x')\n"
            "node = list(res.values())[0]\n"
            "print(json.dumps({'shape': list(node['volume'].shape),"
            " 'sum': float(node['volume'][:].sum()), 'hash': node.metadata['params_hash']}))\n"
        )
        out = subprocess.run([sys.executable, "-c", code, server.uri, server.api_key],
                             capture_output=True, text=True, timeout=120, check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["shape"] == list(volume.shape)
    assert got["sum"] == pytest.approx(float(volume.sum()), rel=1e-5)
    assert got["hash"] == ReconParams().params_hash


def test_orthoslices_png(tmp_path, volume):
    path = save_orthoslices_png(preview_slices(volume), tmp_path / "p.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
