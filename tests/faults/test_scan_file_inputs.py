"""Scan files that name other files or hold the wrong kind of values: external links and virtual
datasets kept inside the scan's folder, angles and frames that are not numbers, NXtomo image keys
that are neither projection, flat nor dark. Each refused or warned in one line naming the dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_user_errors import _cli, _one_line_error, _scan_file

from bluesky_tomo_hpc.cli.errors import EXIT_INPUT
from bluesky_tomo_hpc.model import TomoDataError

N = 24


def _frames(n: int = N) -> np.ndarray:
    return (100 + 900 * np.random.default_rng(0).uniform(0.3, 0.9, (n, 4, 24))).astype(np.float32)


def _recon(capsys, world, path: Path) -> tuple[int, str]:
    return _cli(capsys, "recon", str(path), "--out", str(world.data / "rec"), "--center", "12")


def _dxchange_with_data(path: Path, data) -> Path:
    with h5py.File(path, "w") as f:
        f["/exchange/data"] = data
        f["/exchange/data_white"] = np.full((3, 4, 24), 1000, np.float32)
        f["/exchange/data_dark"] = np.full((3, 4, 24), 100, np.float32)
        f["/exchange/theta"] = np.linspace(0, 180, N, endpoint=False)
    return path


@pytest.mark.parametrize("theta, held", [
    (np.array([f"{a:.1f}" for a in np.linspace(0, 180, N)], dtype=h5py.string_dtype()), "text"),
    (np.array([b"deg"] * N), "text"),
    (np.linspace(0, 180, N) + 1j, "complex numbers"),
    (np.ones(N, bool), "true/false values"),
], ids=["numeric-strings", "words", "complex", "bool"])
def test_theta_that_is_not_numbers(capsys, world, theta, held):
    """/exchange/theta stored as text, complex or booleans: exit 3, one line naming the file and dataset."""
    path = _scan_file(world.input("scan.h5"), theta=theta)
    code, err = _recon(capsys, world, path)
    assert code == EXIT_INPUT
    _one_line_error(err, "recon", "scan.h5", "/exchange/theta", held)


def test_frames_that_are_not_numbers(capsys, world):
    """/exchange/data holding text: exit 3, one line naming the dataset."""
    path = _dxchange_with_data(world.input("scan.h5"), np.full((N, 4, 24), b"x"))
    code, err = _recon(capsys, world, path)
    assert code == EXIT_INPUT
    _one_line_error(err, "recon", "/exchange/data", "text")


@pytest.mark.parametrize("target", ["missing", "outside", "absolute", "inside"])
def test_data_as_an_external_link(capsys, world, target):
    """/exchange/data an external link: inside the folder it is read; missing or outside, exit 3 naming it."""
    folder = world.root / "scan"
    world.input("scan")
    folder.mkdir()
    with h5py.File(world.input("elsewhere.h5"), "w") as g:
        g["data"] = _frames()
    with h5py.File(folder / "frames.h5", "w") as g:
        g["data"] = _frames()
    name = {"missing": "gone.h5", "outside": "../elsewhere.h5", "absolute": str(world.root / "elsewhere.h5"),
            "inside": "frames.h5"}[target]
    path = _dxchange_with_data(folder / "scan.h5", h5py.ExternalLink(name, "/data"))
    code, err = _recon(capsys, world, path)
    if target == "inside":
        assert code == 0, err
        return
    assert code == EXIT_INPUT, err
    words = "does not exist" if target == "missing" else "outside the scan's folder"
    _one_line_error(err, "recon", "/exchange/data", words)


@pytest.mark.parametrize("target", ["missing"])
def test_data_as_a_virtual_dataset(capsys, world, target):
    """/exchange/data a virtual dataset whose source is missing (HDF5 gives zeros): exit 3, one line."""
    folder = world.root / "scan"
    world.input("scan")
    folder.mkdir()
    source = world.root / "elsewhere.h5" if target == "outside" else folder / "gone.h5"
    world.input("elsewhere.h5")
    with h5py.File(source, "w") as g:
        g["data"] = _frames()
    layout = h5py.VirtualLayout(shape=(N, 4, 24), dtype=np.float32)
    name = str(source) if target == "outside" else "gone.h5"
    layout[:] = h5py.VirtualSource(name, "data", shape=(N, 4, 24))
    path = folder / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("/exchange/data", layout)
        f["/exchange/data_white"] = np.full((3, 4, 24), 1000, np.float32)
        f["/exchange/data_dark"] = np.full((3, 4, 24), 100, np.float32)
    if target == "missing":
        source.unlink()
    code, err = _recon(capsys, world, path)
    assert code == EXIT_INPUT, err
    _one_line_error(err, "recon", "/exchange/data", "virtual dataset", "missing")


def _nxtomo(path: Path, keys: np.ndarray) -> Path:
    n = len(keys)
    rng = np.random.default_rng(1)
    data = rng.uniform(400, 800, (n, 4, 24)).astype(np.float32)
    numeric = np.asarray(keys).dtype.kind in "iuf"
    data[np.asarray(keys) == 2] = 100 if numeric else data[0]
    data[np.asarray(keys) == 1] = 1000 if numeric else data[0]
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        det = entry.create_group("instrument/detector")
        det["image_key"] = keys
        det["data"] = data
        entry["sample/rotation_angle"] = np.linspace(0, 180, n, endpoint=False)
    return path


def _keys(odd: int | None = None, at: int = 10) -> np.ndarray:
    keys = np.array([2] * 3 + [1] * 3 + [0] * N)
    if odd is not None:
        keys[at] = odd
    return keys


@pytest.mark.parametrize("key, words", [(7, "unknown image_key (7)"), (-1, "unknown image_key (-1)"),
                                        (3, "marked invalid (image_key 3)")])
def test_nxtomo_frames_with_other_image_keys_are_said(capsys, world, key, words):
    """An NXtomo image_key of 7, -1 or 3: frame skipped, one warning naming the dataset, in provenance too."""
    path = _nxtomo(world.input("scan.nxs"), _keys(key))
    code, err = _recon(capsys, world, path)
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:") and "image_key" in ln]
    assert len(warnings) == 1 and words in warnings[0]
    assert "/entry/instrument/detector/image_key" in warnings[0]
    prov = json.loads((world.data / "rec" / "provenance.json").read_text())
    assert any(words in w for w in prov["warnings"])


@pytest.mark.parametrize("keys, words", [
    (np.array([b"0"] * (N + 6)), "image_key holds text"),
    (np.array([2.0] * 3 + [1.0] * 3 + [0.5] * N), "fractional image keys"),
])
def test_nxtomo_image_keys_that_are_not_whole_numbers(capsys, world, keys, words):
    """NXtomo image keys stored as text or fractions: exit 3, one line naming the dataset."""
    path = _nxtomo(world.input("scan.nxs"), keys)
    code, err = _recon(capsys, world, path)
    assert code == EXIT_INPUT, err
    _one_line_error(err, "recon", "image_key", words)


def test_document_frames_through_a_link_out_of_the_folder(world):
    """A detector file named by a document whose dataset links out of its folder: refused, naming it."""
    from bluesky_tomo_hpc.sources.hdf5 import SwmrReader

    with h5py.File(world.input("elsewhere.h5"), "w") as g:
        g["data"] = _frames()
    det = world.data / "det.h5"
    with h5py.File(det, "w") as f:
        f["/entry/data/data"] = h5py.ExternalLink(str(world.root / "elsewhere.h5"), "/data")
    with SwmrReader(timeout=0.5) as reader, pytest.raises(TomoDataError, match="outside the scan's folder"):
        reader.read(str(det), "/entry/data/data", 0, 4)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_scan_path_that_is_not_a_regular_file(world, kind):
    """A scan path (command line or document) that is a FIFO or /dev/zero: refused at once, never a hang."""
    import threading

    from bluesky_tomo_hpc.sources.hdf5 import SwmrReader
    from bluesky_tomo_hpc.sources.raw_files import describe_scan

    path = world.data / "scan.h5"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    errors: list[str] = []

    def attempt() -> None:
        reader = SwmrReader(timeout=0.2)
        for read in (lambda: describe_scan(path), lambda: reader.read(str(path), "/d", 0, 1)):
            try:
                read()
            except TomoDataError as exc:
                errors.append(str(exc))

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "reading the scan path hung"
    assert len(errors) == 2 and all("not a regular file" in e for e in errors), errors
