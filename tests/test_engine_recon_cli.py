"""``recon FILE``: HDF5 in, Zarr + TIFF + provenance out, in slabs; centre auto / try / value."""

from __future__ import annotations

import argparse
import json

import h5py
import numpy as np
import pytest
from test_engine_recon_pipeline import make_scan  # tests/ is on sys.path (prepend import mode)

from bluesky_tomo_hpc.cli import recon as recon_cli
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.reconstruct import reconstruct_scan
from bluesky_tomo_hpc.sources.raw_files import load_scan


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    recon_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture
def dx_file(tmp_path):
    """A data-exchange file of the simulated phantom: 10 rows, 79 columns (odd), axis at 40.0."""
    return write_dxchange(tmp_path / "scan.h5", make_scan(n_det=79, ny=10, n_angles=90, center=40.0))


def write_dxchange(path, data, **extra):
    """``data`` (a ScanData) as a data-exchange file; ``extra``: more datasets, path -> value."""
    with h5py.File(path, "w") as f:
        f["/exchange/data"] = data.projections
        f["/exchange/data_white"] = data.flats
        f["/exchange/data_dark"] = data.darks
        f["/exchange/theta"] = np.rad2deg(data.theta)
        for key, value in extra.items():
            f[key] = value
    return path


def test_recon_writes_zarr_tiff_provenance_in_slabs(dx_file, tmp_path):
    import tifffile
    import zarr

    out = tmp_path / "out"
    args = _parse(["recon", str(dx_file), "--out", str(out), "--rows", "2:9", "--slab-rows", "3",
                   "--filter", "hann"])
    assert args.func is recon_cli.run
    assert recon_cli.run(args) == 0
    vol = zarr.open_array(out / "volume.ome.zarr" / "0", mode="r")
    assert vol.shape == (7, 79, 79)
    tiffs = sorted((out / "tiff").glob("recon_*.tiff"))
    # named by detector row
    assert [p.name for p in tiffs][:2] == ["recon_00002.tiff", "recon_00003.tiff"] and len(tiffs) == 7
    np.testing.assert_array_equal(tifffile.imread(tiffs[4]), vol[4])
    prov = json.loads((out / "provenance.json").read_text())
    params = ReconParams.model_validate(prov["params"])
    assert prov["params_hash"] == params.params_hash and params.rows == (2, 9)
    center = prov["center"]
    assert center["value"] == pytest.approx(40.0, abs=0.5) and 0 < center["confidence"] <= 1
    assert prov["rows"] == [2, 9] and prov["shape"] == [7, 79, 79]
    assert {"numpy", "finufft", "python"} <= set(prov["versions"])
    assert prov["timings_s"]["reconstruct"] > 0 and prov["timings_s"]["center"] > 0
    assert prov["call"][1:3] == ["recon", str(dx_file)] or prov["call"]
    assert prov["source"]["path"] == str(dx_file.resolve()) and len(prov["source"]["sha256"]) == 64
    assert not (tmp_path / "out.partial").exists()
    # slabs give the same slices as one in-memory reconstruction at the same centre
    whole = reconstruct_scan(load_scan(dx_file), params, center=center["value"])
    np.testing.assert_allclose(vol[:], whole.volume, atol=1e-3 * float(np.abs(whole.volume).max()))


def test_recon_given_centre_binning_and_params_file(dx_file, tmp_path):
    import zarr

    pfile = tmp_path / "p.yaml"
    pfile.write_text("algorithm: fbp\nfilter_name: parzen\ncircular_mask: 0.9\n")
    out = tmp_path / "b2"
    args = _parse(["recon", str(dx_file), "--out", str(out), "--center", "40.0", "--binning", "2",
                   "--params", str(pfile), "--no-tiff"])
    assert recon_cli.run(args) == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["center"]["value"] == 40.0 and prov["center"]["method"] == "given"
    assert prov["params"]["algorithm"] == "fbp" and prov["params"]["binning"] == 2
    assert zarr.open_array(out / "volume.ome.zarr" / "0", mode="r").shape == (5, 39, 39)
    assert not (out / "tiff").exists()


def test_recon_try_writes_contact_sheet(dx_file, tmp_path):
    out = tmp_path / "try"
    args = _parse(["recon", str(dx_file), "--out", str(out), "--center", "try", "--try-width", "1"])
    assert recon_cli.run(args) == 0
    record = json.loads((out / "center_try.json").read_text())
    assert len(record["candidates"]) == 3 and record["estimate"] == pytest.approx(40.0, abs=0.5)
    assert (out / "center_try.png").stat().st_size > 1000


def test_recon_bad_input_exit_code(dx_file, tmp_path, capsys):
    from bluesky_tomo_hpc.cli.main import main

    assert main(["recon", str(tmp_path / "nope.h5")]) == 3
    assert "no such scan file" in capsys.readouterr().err
    assert main(["recon", str(dx_file), "--rows", "5:50", "--out", str(tmp_path)]) == 2
    assert "outside the detector's 10 rows" in capsys.readouterr().err
    assert main(["recon", str(dx_file), "--center", "left"]) == 2
    assert "--center must be auto, try or a number" in capsys.readouterr().err
