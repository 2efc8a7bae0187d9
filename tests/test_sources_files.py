"""File loaders: data-exchange (tooth.h5), NeXus with external links (DIAD k11), synthetic NXtomo."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from bluesky_tomo_hpc.model import FrameBatch, FrameRole, ScanEnd, ScanSpec, TomoDataError
from bluesky_tomo_hpc.sources.raw_files import describe_scan, iter_file_stream, load_scan

K11 = "httomo_k11_diad/k11-18014.nxs"
TOOTH = "tomopy_tooth/tooth.h5"


def test_k11_nexus_image_key_and_external_links(shared_data: Path, tmp_path, monkeypatch):
    # a working directory with nothing in it: links must resolve relative to the .nxs file
    monkeypatch.chdir(tmp_path)
    desc = describe_scan(shared_data / K11)
    assert desc.format == "nxtomo"
    assert (desc.n_projections, desc.n_flats, desc.n_darks) == (3001, 100, 100)
    assert desc.first_projection == 100
    assert desc.frame_shape == (22, 26) and desc.dtype == "uint16"
    assert desc.data.file.endswith("k11-18014/k11-18014-imaging.h5")
    assert desc.data.path == "/entry/detector/detector"
    theta = np.degrees(desc.theta)
    assert 89.97 <= theta.min() and theta.max() <= 270.031
    assert theta[0] == pytest.approx(90.0, abs=0.05) and theta[-1] == pytest.approx(270.0, abs=0.05)
    assert desc.angle_source.endswith("gts_theta_value")
    # the dark frames are exactly image_key == 2 of the linked detector file
    with h5py.File(desc.data.file, "r") as f, \
            h5py.File(shared_data / K11, "r") as nxs:
        keys = nxs["/entry/instrument/imaging/image_key"][()]
        expected_darks = f["/entry/detector/detector"][()][keys == 2][:, 5:9]
    scan = load_scan(shared_data / K11, rows=(5, 9))
    assert scan.projections.shape == (3001, 4, 26)
    assert scan.flats.shape == (100, 4, 26)
    np.testing.assert_array_equal(scan.darks, expected_darks)
    assert scan.metadata["first_projection"] == 100


def test_k11_stream_origins_point_into_the_linked_file(shared_data: Path):
    items = list(iter_file_stream(shared_data / K11, chunk=1000))
    assert isinstance(items[0], ScanSpec) and isinstance(items[-1], ScanEnd)
    batches = [b for b in items if isinstance(b, FrameBatch)]
    proj = [b for b in batches if b.role is FrameRole.PROJECTION]
    assert proj[0].origin[2:] == (100, 1100)
    assert all(b.origin[0].endswith("k11-18014-imaging.h5") for b in batches)
    assert sum(len(b) for b in proj) == 3001
    np.testing.assert_array_equal(np.concatenate([b.indices for b in proj]), np.arange(3001))
    assert items[-1].num_frames == {"dark": 100, "flat": 100, "projection": 3001}
    # flats come in two blocks (before and after), numbered 0..99 in acquisition order
    flats = [b for b in batches if b.role is FrameRole.FLAT]
    assert [b.origin[2:] for b in flats] == [(0, 50), (3101, 3151)]
    np.testing.assert_array_equal(np.concatenate([b.indices for b in flats]), np.arange(100))


def test_tooth_data_exchange(shared_data: Path):
    scan = load_scan(shared_data / TOOTH)
    assert scan.projections.shape == (181, 2, 640)
    assert scan.flats.shape == (10, 2, 640) and scan.darks.shape == (10, 2, 640)
    # theta stored in degrees, k*180/181; returned in radians
    np.testing.assert_allclose(scan.theta, np.radians(np.arange(181) * 180 / 181), atol=1e-9)
    binned = load_scan(shared_data / TOOTH, binning=2)
    assert binned.projections.shape == (181, 1, 320) and binned.projections.dtype == np.float32
    expected = scan.projections[:, :2, :].reshape(181, 1, 2, 320, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(binned.projections, expected, rtol=1e-6)
    one_row = load_scan(shared_data / TOOTH, rows=(1, 2))
    np.testing.assert_array_equal(one_row.projections, scan.projections[:, 1:2])


def test_tooth_stream_matches_load_scan(shared_data: Path):
    scan = load_scan(shared_data / TOOTH)
    items = list(iter_file_stream(shared_data / TOOTH, chunk=50))
    spec = items[0]
    assert spec.frame_shape == (2, 640) and spec.n_projections == 181 and spec.source == "file"
    proj = [b for b in items if isinstance(b, FrameBatch) and b.role is FrameRole.PROJECTION]
    assert [len(b) for b in proj] == [50, 50, 50, 31]
    np.testing.assert_array_equal(np.concatenate([b.frames for b in proj]), scan.projections)
    np.testing.assert_allclose(np.concatenate([b.angles for b in proj]), scan.theta)
    assert proj[1].origin == (str(Path(shared_data / TOOTH).resolve()), "/exchange/data", 50, 100)


def _write_nxtomo(folder: Path, *, units: str = "degree") -> tuple[Path, np.ndarray]:
    """A standard NXtomo whose detector data is an external link into a sibling folder."""
    rng = np.random.default_rng(1)
    keys = np.array([2, 2, 1, 1] + [0] * 6 + [1, 1])
    frames = rng.integers(0, 4000, size=(len(keys), 8, 12), dtype=np.uint16)
    (folder / "raw").mkdir(parents=True)
    with h5py.File(folder / "raw" / "frames.h5", "w") as f:
        f["/entry/data/data"] = frames
    angles = np.concatenate([[0, 0, 0, 0], np.linspace(0, 150, 6), [180, 180]])
    with h5py.File(folder / "scan.nxs", "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["definition"] = "NXtomo"
        det = entry.create_group("instrument/detector")
        det.attrs["NX_class"] = "NXdetector"
        det["data"] = h5py.ExternalLink("raw/frames.h5", "/entry/data/data")
        det["image_key"] = keys
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        values = np.radians(angles) if units == "rad" else angles
        sample["rotation_angle"] = values
        sample["rotation_angle"].attrs["units"] = units
    return folder / "scan.nxs", frames


@pytest.mark.parametrize("units", ["degree", "rad"])
def test_nxtomo_standard_layout_survives_a_move(tmp_path, units):
    path, frames = _write_nxtomo(tmp_path / "a", units=units)
    shutil.move(tmp_path / "a", tmp_path / "b")  # the link is relative: a moved folder still loads
    scan = load_scan(tmp_path / "b" / "scan.nxs")
    np.testing.assert_array_equal(scan.projections, frames[4:10])
    np.testing.assert_array_equal(scan.darks, frames[:2])
    np.testing.assert_array_equal(scan.flats, np.concatenate([frames[2:4], frames[10:]]))
    np.testing.assert_allclose(np.degrees(scan.theta), np.linspace(0, 150, 6), atol=1e-9)
    desc = describe_scan(tmp_path / "b" / "scan.nxs")
    assert desc.first_projection == 4 and desc.angle_source == "/entry/sample/rotation_angle"


def test_clear_errors(tmp_path, shared_data: Path):
    with pytest.raises(TomoDataError, match=r"rows \(0, 5\) outside the detector's 2 rows"):
        load_scan(shared_data / TOOTH, rows=(0, 5))
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(TomoDataError, match="not a tomography file"):
        load_scan(plain)
    path, _ = _write_nxtomo(tmp_path / "c")
    (tmp_path / "c" / "raw" / "frames.h5").unlink()
    with pytest.raises(TomoDataError, match="external file is absent"):
        describe_scan(path)
