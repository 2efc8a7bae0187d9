"""The ophyd v1 simulated beamline: images in events, and AD_HDF5 Resource/Datum files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from event_model import Filler

from bluesky_tomo_hpc.sim import (
    DATA_PATH,
    FrameSimulator,
    make_sim_beamline,
    tomo_dark_flat_and_scan,
    tomo_scan,
)
from bluesky_tomo_hpc.sim.ophyd_v1_detector import AD_HDF5_SPEC

SHAPE = (32, 64)


def _collect(RE):
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return docs


def _replay(bl, n_dark: int, n_flat: int, angles) -> list[np.ndarray]:
    sim = FrameSimulator(
        bl.phantom, bl.physics, rotation_offset_px=bl.rotation_offset_px, seed=bl.simulator.seed
    )
    frames = [sim.acquire(angle_deg=0, shutter_open=False, sample_in=True) for _ in range(n_dark)]
    frames += [sim.acquire(angle_deg=0, shutter_open=True, sample_in=False) for _ in range(n_flat)]
    frames += [sim.acquire(angle_deg=a, shutter_open=True, sample_in=True) for a in angles]
    return frames


def test_images_travel_in_events(RE, tmp_path):
    bl = make_sim_beamline(tmp_path, flavour="ophyd_v1", shape=SHAPE, seed=2)
    docs = _collect(RE)
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=8, num_darks=2, num_flats=2, exposure=0))
    tomo = next(d for n, d in docs if n == "start")["tomo"]
    assert tomo["detector"] == "tomo_det_image" and tomo["rotation_axis"] == "rot"
    descs = {d["uid"]: d for n, d in docs if n == "descriptor"}
    key = next(iter(descs.values()))["data_keys"]["tomo_det_image"]
    assert key["shape"] == [*SHAPE] and key["dtype"] == "array" and "external" not in key
    events = [d for n, d in docs if n == "event"]
    assert [descs[e["descriptor"]]["name"] for e in events] == ["dark"] * 2 + ["flat"] * 2 + ["primary"] * 8
    angles = [e["data"]["rot"] for e in events[4:]]
    np.testing.assert_allclose(angles, np.linspace(0, 180, 8, endpoint=False))
    images = [e["data"]["tomo_det_image"] for e in events]
    assert all(isinstance(im, np.ndarray) and im.dtype == np.uint16 for im in images)
    for got, want in zip(images, _replay(bl, 2, 2, angles), strict=True):
        np.testing.assert_array_equal(got, want)
    assert not any(n in ("resource", "datum") for n, _ in docs)


class _ADHDF5Handler:
    """The area-detector-handlers AD_HDF5 handler, as a consumer would register it."""

    def __init__(self, filename: str, frame_per_point: int = 1) -> None:
        self._file = h5py.File(filename, "r", swmr=True)
        self._fpp = frame_per_point

    def __call__(self, point_number: int) -> np.ndarray:
        ds = self._file[DATA_PATH]
        ds.refresh()
        return ds[point_number * self._fpp : (point_number + 1) * self._fpp].squeeze(0)

    def close(self) -> None:
        self._file.close()


def test_external_ad_hdf5_resource_and_datum(RE, tmp_path):
    bl = make_sim_beamline(tmp_path / "raw", flavour="ophyd_v1", shape=SHAPE, seed=4, external_files=True)
    docs = _collect(RE)
    df_uid, uid = RE(
        tomo_dark_flat_and_scan(
            bl.detector, bl.stage, num_darks=2, num_flats=3, num_projections=5, exposure=0
        )
    )
    resources = [d for n, d in docs if n == "resource"]
    assert len(resources) == 3  # one file per stage: dark, flat, primary
    for res in resources:
        assert res["spec"] == AD_HDF5_SPEC and res["resource_kwargs"] == {"frame_per_point": 1}
        assert Path(res["root"], res["resource_path"]).is_file()
    assert {r["run_start"] for r in resources} == {df_uid, uid}
    datums = [d for n, d in docs if n == "datum"]
    assert [d["datum_kwargs"]["point_number"] for d in datums] == [0, 1, 0, 1, 2, 0, 1, 2, 3, 4]
    events = [d for n, d in docs if n == "event"]
    assert all(e["filled"] == {"tomo_det_image": False} for e in events)
    key = next(d for n, d in docs if n == "descriptor")["data_keys"]["tomo_det_image"]
    assert key["external"] == "FILESTORE:" and key["shape"] == [*SHAPE]

    # fill the events the legacy way: event_model.Filler with an AD_HDF5 handler
    angles = [e["data"]["rot"] for e in events[5:]]
    with Filler({AD_HDF5_SPEC: _ADHDF5Handler}, inplace=False) as filler:
        filled = []
        for name, doc in docs:
            out = filler(name, doc)
            if name == "event":
                filled.append(out[1]["data"]["tomo_det_image"])
    for got, want in zip(filled, _replay(bl, 2, 3, angles), strict=True):
        np.testing.assert_array_equal(got, want)


def test_unknown_flavour_and_mismatched_stage(tmp_path):
    with pytest.raises(ValueError, match="flavour"):
        make_sim_beamline(tmp_path, flavour="epics")
    from bluesky_tomo_hpc.sim.ophyd_v1_detector import SimTomoDetectorV1
    from bluesky_tomo_hpc.sim.stage import make_async_stage

    bl = make_sim_beamline(tmp_path, flavour="ophyd_v1", shape=SHAPE)
    with pytest.raises(TypeError, match="ophyd_v1 stage"):
        SimTomoDetectorV1(bl.simulator, make_async_stage())
