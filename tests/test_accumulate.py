"""Frame accumulation: order-independent assembly and clear errors for missing calibration."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_tomo_hpc.model import FrameBatch, FrameRole, MissingCalibrationError, ScanSpec, TomoDataError
from bluesky_tomo_hpc.sinks.accumulate import FrameAccumulator


def batch(role, idx, value=1.0, angles=None, times=None):
    idx = np.asarray(idx)
    frames = np.full((len(idx), 4, 6), value, dtype=np.float32) + idx[:, None, None]
    return FrameBatch(role, idx, frames, angles=angles, timestamps=times)


def spec():
    return ScanSpec(run_uid="r1", frame_shape=(4, 6), streams={"flat": "flat", "dark": "dark"})


def test_out_of_order_and_duplicate_batches_assemble_in_index_order():
    acc = FrameAccumulator(spec())
    acc.add(batch(FrameRole.PROJECTION, [2, 3], angles=np.array([0.2, 0.3]), times=np.array([12.0, 13.0])))
    acc.add(batch(FrameRole.PROJECTION, [0, 1], angles=np.array([0.0, 0.1]), times=np.array([10.0, 11.0])))
    acc.add(batch(FrameRole.PROJECTION, [1], angles=np.array([0.1]), times=np.array([11.0])))  # replayed
    acc.add(batch(FrameRole.FLAT, [0], 100.0, times=np.array([9.0])))
    acc.add(batch(FrameRole.DARK, [0, 1], 5.0))
    data = acc.assemble()
    assert data.projections.shape == (4, 4, 6)
    np.testing.assert_allclose(data.projections[:, 0, 0], [1, 2, 3, 4])
    np.testing.assert_allclose(data.theta, [0.0, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(data.projection_times, [10, 11, 12, 13])
    assert data.darks.shape == (2, 4, 6) and data.flats.shape == (1, 4, 6)


def test_missing_flats_named():
    acc = FrameAccumulator(spec())
    acc.add(batch(FrameRole.PROJECTION, [0], angles=np.array([0.0])))
    acc.add(batch(FrameRole.DARK, [0]))
    with pytest.raises(MissingCalibrationError, match=r"run r1: no flat-field frames \(stream 'flat'\)"):
        acc.assemble()


def test_no_projections_or_missing_angles():
    acc = FrameAccumulator(spec())
    with pytest.raises(TomoDataError, match="no projection frames"):
        acc.assemble()
    acc.add(batch(FrameRole.PROJECTION, [0, 1]))
    acc.add(batch(FrameRole.FLAT, [0]))
    acc.add(batch(FrameRole.DARK, [0]))
    with pytest.raises(TomoDataError, match="2 of 2 projections have no rotation angle"):
        acc.assemble()


def test_batch_shape_checked():
    with pytest.raises(ValueError, match="frames must be"):
        FrameBatch(FrameRole.DARK, np.arange(2), np.zeros((3, 4, 4)))
