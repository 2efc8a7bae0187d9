"""Vo et al.'s combined stripe removal (dead, large, small stripes) and dead-pixel repair.

Reference: algotom ``remove_all_stripe`` / ``remove_dead_stripe`` / ``remove_large_stripe``
(a peer from the ``bench`` extra: compared when installed), and simulated scans whose truth
is known.
"""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_tomo_hpc.engine.params import ReconParams, RingRemoval
from bluesky_tomo_hpc.engine.preprocess import circular_mask, repair_dead_pixels
from bluesky_tomo_hpc.engine.reconstruct import (
    preprocess_projections,
    reconstruct_scan,
    reconstruct_sinograms,
)
from bluesky_tomo_hpc.engine.stripes import (
    detect_stripe,
    remove_all_stripe,
    remove_dead_stripe,
    remove_large_stripe,
    remove_rings,
)
from bluesky_tomo_hpc.sim.scan_arrays import simulate_scan


def _corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def wood(shared_data):
    import h5py

    with h5py.File(shared_data / "muhrec_wood360" / "muhrec_wood360.h5", "r") as f:
        return -np.log(f["/exchange/data"][:, 0, :])


def test_combined_removal_matches_algotom_on_real_neutron_sinogram(wood):
    rem = pytest.importorskip("algotom.prep.removal")
    large = remove_large_stripe(wood, 3, 61)
    np.testing.assert_allclose(large, rem.remove_large_stripe(wood, 3, 61), atol=1e-4)
    np.testing.assert_allclose(remove_dead_stripe(wood, 3, 61),
                               rem.remove_dead_stripe(wood, 3, 61, residual=False), atol=1e-4)
    ours, theirs = remove_all_stripe(wood), rem.remove_all_stripe(wood)
    assert np.abs(ours - theirs).max() < 0.02 and _corr(ours, theirs) > 0.9999


def test_detect_stripe_finds_outliers_only():
    rng = np.random.default_rng(0)
    v = 1 + 0.01 * rng.standard_normal(200)
    assert not detect_stripe(v).any()
    v[[17, 150]] = [1.3, 0.6]
    assert set(np.flatnonzero(detect_stripe(v))) == {17, 150}


def test_default_ring_removal_handles_dead_and_partial_stripes():
    """A dead column (constant) and a column bad for a third of the scan (an arc, not a ring):
    the default (sorting) leaves less artefact than no filter; the wavelet-Fourier filter
    spreads the arc into a ring and leaves more (bench_rings.py measures the same at 256 px)."""
    nx = 128
    data = simulate_scan((4, nx), n_angles=180, rotation_offset_px=0.0)
    clean, theta, _ = preprocess_projections(data, ReconParams())
    bad = clean.copy()
    bad[:, :, 40] = 0.05  # dead: no sample signal at all
    bad[60:120, :, 90] += 0.4  # partial: misbehaves for 60 of 180 angles
    c = (nx - 1) / 2

    def slice_of(p):
        return circular_mask(reconstruct_sinograms(p[:, 1:2], theta, c, ReconParams())[0], 0.95)

    ref = slice_of(clean)

    def artefact(p):
        return float(np.sqrt(np.mean((slice_of(p) - ref) ** 2)))

    default = artefact(remove_rings(bad, RingRemoval()))
    assert RingRemoval().method == "sort"
    assert default < 0.7 * artefact(bad) and default < artefact(remove_rings(bad, RingRemoval(method="fw")))


def test_zero_pixels_are_interpolated_and_reported():
    data = simulate_scan((4, 64), n_angles=60, rotation_offset_px=0.0)
    data.projections[5:9, 2, 30] = 0  # a dead pixel for a few frames (raw counts 0 < dark)
    data.projections[20, 1, 10:12] = np.iinfo(np.uint16).max  # saturated
    proj_log, _, warnings = preprocess_projections(data, ReconParams())
    assert any("6 pixels with zero" in w for w in warnings), warnings
    assert proj_log.max() < 5  # no clipped 1e-6 transmission (13.8) left
    ref = proj_log[5:9, 2, [29, 31]].mean(axis=1)
    np.testing.assert_allclose(proj_log[5:9, 2, 30], ref, atol=0.1)
    res = reconstruct_scan(data, ReconParams(center=31.5))
    assert any("interpolated" in w for w in res.warnings)


def test_repair_dead_pixels_handles_wide_gaps_and_clean_input():
    x = np.ones((1, 2, 50), np.float32) * 0.5
    same, n = repair_dead_pixels(x)
    assert n == 0 and same is x
    x[0, 0, 10:30] = 0.0  # 20 dead columns in a row
    x[0, 1, :] = np.nan  # a dead row
    out, n = repair_dead_pixels(x)
    assert n == 70 and np.isfinite(out).all() and (out > 0).all()
    np.testing.assert_allclose(out[0, 0], 0.5)
    # only lines with a bad pixel are touched (the others come back as they were, the input kept)
    y = np.random.default_rng(0).uniform(0.2, 1.0, (3, 4, 50)).astype(np.float32)
    y[1, 2, 7] = -1.0
    fixed, n = repair_dead_pixels(y)
    assert n == 1 and fixed is not y and y[1, 2, 7] == -1.0
    others = np.arange(12) != 6  # line 6 = [1, 2]
    np.testing.assert_array_equal(fixed.reshape(12, 50)[others], y.reshape(12, 50)[others])
    assert fixed[1, 2, 7] == pytest.approx(np.mean(y[1, 2, [5, 6, 8, 9]]), rel=1e-5)
    sat = np.zeros(y.shape, bool)
    sat[0, 0, 0] = True  # a saturated pixel alone also takes the slow path
    assert repair_dead_pixels(fixed, sat)[1] == 1
