"""Preprocessing: normalisation, -log, zingers, bad frames, validation, padding, stripes, phase.

Reference values come from TomoPy's own test data (``../shared/data/tomopy_testdata``); the
parameters are those of TomoPy's tests (test/test_tomopy/test_prep/test_stripe.py, test_phase.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bluesky_tomo_hpc.engine import preprocess as pp
from bluesky_tomo_hpc.engine.params import RingRemoval
from bluesky_tomo_hpc.engine.phase import paganin, paganin_filter, wavelength_m
from bluesky_tomo_hpc.engine.stripes import remove_rings, remove_stripe_fw, remove_stripe_sort
from bluesky_tomo_hpc.model import MissingCalibrationError, ScanData, TomoDataError


def _load(shared_data, name: str) -> np.ndarray:
    return np.load(shared_data / "tomopy_testdata" / f"{name}.npy")


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _smooth_sino(n_angles: int = 180, nx: int = 128, seed: int = 3) -> np.ndarray:
    """A -log sinogram of a few Gaussian blobs off the axis (sinusoidal traces, no stripes)."""
    rng = np.random.default_rng(seed)
    th = np.linspace(0, np.pi, n_angles, endpoint=False)
    cols = np.arange(nx) - (nx - 1) / 2
    r, phi = rng.uniform(0.15 * nx, 0.35 * nx, 8), rng.uniform(0, 2 * np.pi, 8)
    width = rng.uniform(3, 8, 8)
    pos = (r * np.cos(phi))[None] * np.cos(th)[:, None] + (r * np.sin(phi))[None] * np.sin(th)[:, None]
    return np.exp(-0.5 * ((cols[None, :, None] - pos[:, None, :]) / width) ** 2).sum(-1).astype(np.float32)


def _stripe_amplitude(residual: np.ndarray, cols: list[int]) -> np.ndarray:
    """Angle-mean of a residual at each column, relative to its neighbours (a stripe's height)."""
    m = residual.mean(axis=0)
    return np.array([abs(m[c] - np.median(np.r_[m[c - 5 : c - 1], m[c + 3 : c + 6]])) for c in cols])


# -- normalize ------------------------------------------------------------------------------------
def test_normalize_matches_tomopy(shared_data):
    out = pp.normalize(_load(shared_data, "tomo"), _load(shared_data, "flat"), _load(shared_data, "dark"))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _load(shared_data, "normalize"), rtol=1e-6, atol=1e-7)


def test_normalize_interpolates_flats_taken_before_and_after():
    ny, nx, n = 4, 6, 11
    dark = np.full((3, ny, nx), 100.0)
    flats = np.concatenate([np.full((2, ny, nx), 1100.0), np.full((2, ny, nx), 2100.0)])
    flat_times = np.array([-1.0, 0.0, 13.0, 14.0])  # before: mean t=-0.5, after: mean t=13.5
    proj_times = np.linspace(0.5, 12.5, n)
    beam = 1000.0 + 1000.0 * (proj_times + 0.5) / 14.0  # the beam drifts linearly in time
    proj = 100.0 + 0.4 * beam[:, None, None] * np.ones((n, ny, nx))
    times = {"proj_times": proj_times, "flat_times": flat_times}
    out = pp.normalize(proj, flats, dark, **times)
    np.testing.assert_allclose(out, 0.4, rtol=1e-6)
    averaged = pp.normalize(proj, flats, dark, **times, interpolate=False)
    assert abs(float(averaged[0].mean()) - 0.4 * beam[0] / 1500) < 1e-5  # plain mean of all flats
    no_times = pp.normalize(proj, flats, dark)
    np.testing.assert_allclose(no_times, averaged)


def test_normalize_refuses_bad_calibration():
    proj = np.full((5, 4, 6), 500.0)
    flats, darks = np.full((2, 4, 6), 1000.0), np.full((2, 4, 6), 10.0)
    with pytest.raises(TomoDataError, match="same detector region"):
        pp.normalize(proj, flats[:, :, :5], darks)
    with pytest.raises(TomoDataError, match="same detector region"):
        pp.normalize(proj, flats, darks[:, :3])
    with pytest.raises(MissingCalibrationError, match="no flat"):
        pp.normalize(proj, np.empty((0, 4, 6)), darks)
    with pytest.raises(MissingCalibrationError, match="no dark"):
        pp.normalize(proj, flats, np.empty((0, 4, 6)))
    with pytest.raises(TomoDataError, match="darker than darks"):
        pp.normalize(proj, darks, flats)
    with pytest.raises(TomoDataError, match="flat times"):
        pp.normalize(proj, flats, darks, proj_times=np.arange(5.0), flat_times=np.arange(3.0))


def test_normalize_dead_pixel_gives_finite_unit_transmission():
    proj = np.full((3, 4, 5), 500.0)
    flats, darks = np.full((2, 4, 5), 1000.0), np.full((2, 4, 5), 10.0)
    flats[:, 2, 3] = 10.0  # dead pixel: flat == dark
    out = pp.normalize(proj, flats, darks)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:, 2, 3], 1.0)
    assert abs(float(out[0, 0, 0]) - 490 / 990) < 1e-6


def test_minus_log_is_finite_and_exact_where_valid():
    x = np.array([1.0, 0.5, 0.0, -0.2, np.nan, np.inf, 1e-9], dtype=np.float32)
    out = pp.minus_log(x, clip=1e-6)
    assert np.isfinite(out).all() and out.dtype == np.float32
    assert out[0] == 0 and abs(out[1] - math.log(2)) < 1e-6
    assert abs(out[2] - (-math.log(1e-6))) < 1e-4 and out[3] == out[2] == out[6]


# -- zingers and bad frames -----------------------------------------------------------------------
def test_remove_zingers_removes_outliers_and_keeps_the_rest():
    rng = np.random.default_rng(0)
    clean = 1000 + 20 * rng.standard_normal((4, 32, 40))
    data = clean.copy()
    hits = (np.array([0, 1, 2, 3]), np.array([5, 10, 20, 31]), np.array([7, 30, 0, 39]))
    data[hits] += 5000
    out = pp.remove_zingers(data, threshold=6.0)
    assert np.all(np.abs(out[hits] - 1000) < 100)
    untouched = np.isclose(out, data, rtol=1e-6)
    assert untouched.mean() > 0.99  # noise within 6 sigma is not "corrected"
    absolute = pp.remove_zingers(data, threshold=500.0, mode="absolute")
    assert np.all(np.abs(absolute[hits] - 1000) < 100) and np.isclose(absolute, data, rtol=1e-6).mean() > 0.99
    single = pp.remove_zingers(data[0], threshold=6.0)
    np.testing.assert_allclose(single, out[0])
    with pytest.raises(ValueError, match="threshold"):
        pp.remove_zingers(data, threshold=0)


def test_mask_bad_frames_repairs_and_reports():
    rng = np.random.default_rng(1)
    proj = (0.5 + 0.01 * rng.standard_normal((10, 8, 9))).astype(np.float32)
    bad = proj.copy()
    bad[3] = np.nan
    bad[7, 2, 4] = np.inf
    bad[7, 5, 1] = -np.inf
    out, idx = pp.mask_bad_frames(bad)
    assert idx.tolist() == [3, 7]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[3], (bad[2] + bad[4]) / 2, rtol=1e-6)
    assert abs(out[7, 2, 4] - (bad[6, 2, 4] + bad[8, 2, 4]) / 2) < 1e-6
    assert np.isnan(bad[3]).all()  # the input is not modified
    same, none = pp.mask_bad_frames(proj)
    assert same is proj and none.size == 0
    with pytest.raises(TomoDataError, match="all 10 projections"):
        pp.mask_bad_frames(np.full((10, 2, 2), np.nan))


# -- angles and validation ------------------------------------------------------------------------
def test_check_angles_detects_degrees():
    deg = np.arange(181) * 180 / 181
    rad, warn = pp.check_angles(deg)
    assert warn is not None and "degrees" in warn
    np.testing.assert_allclose(rad, np.deg2rad(deg))
    good = np.linspace(0, np.pi, 90, endpoint=False)
    same, none = pp.check_angles(good)
    assert none is None and np.array_equal(same, good)
    with pytest.raises(TomoDataError, match="NaN"):
        pp.check_angles(np.array([0.0, np.nan]))


def _scan(**changes) -> ScanData:
    n, ny, nx = 30, 4, 7
    fields = {
        "projections": np.full((n, ny, nx), 400.0, dtype=np.float32),
        "theta": np.linspace(0, np.pi, n, endpoint=False),
        "darks": np.full((2, ny, nx), 10.0),
        "flats": np.full((3, ny, nx), 1000.0),
        "run_uid": "abc",
    }
    fields.update(changes)
    return ScanData(**fields)


def test_validate_scan_accepts_good_and_warns_about_degraded():
    assert pp.validate_scan(_scan()) == []
    assert any("degrees" in w for w in pp.validate_scan(_scan(theta=np.arange(30) * 6.0)))
    proj = _scan().projections.copy()
    proj[4, 1, 1] = np.nan
    warns = pp.validate_scan(_scan(projections=proj))
    assert any("1 projections contain NaN" in w for w in warns)
    assert all(w.startswith("run abc") for w in warns)
    assert any("only" in w for w in pp.validate_scan(_scan(theta=np.linspace(0, 1.0, 30))))


def test_validate_scan_refuses_impossible_scans():
    with pytest.raises(TomoDataError, match="29 angles for 30"):
        pp.validate_scan(_scan(theta=np.linspace(0, 3, 29)))
    with pytest.raises(MissingCalibrationError, match="no flats"):
        pp.validate_scan(_scan(flats=np.empty((0, 4, 7))))
    with pytest.raises(TomoDataError, match="darks have shape"):
        pp.validate_scan(_scan(darks=np.zeros((2, 4, 6))))
    with pytest.raises(TomoDataError, match="darker than darks"):
        pp.validate_scan(_scan(flats=np.full((3, 4, 7), 5.0)))
    with pytest.raises(TomoDataError, match="must be"):
        pp.validate_scan(_scan(projections=np.zeros((30, 7))))


# -- padding and masks ----------------------------------------------------------------------------
@pytest.mark.parametrize("nx", [63, 64])
def test_pad_edge_roundtrip_odd_and_even(nx):
    sino = np.random.default_rng(2).random((5, nx)).astype(np.float32)
    npad = pp.pad_width_for(nx)
    assert npad == (math.ceil(nx * math.sqrt(2)) - nx) // 2
    padded = pp.pad_edge(sino, npad)
    assert padded.shape == (5, nx + 2 * npad)
    assert np.all(padded[:, :npad] == sino[:, :1]) and np.all(padded[:, -npad:] == sino[:, -1:])
    np.testing.assert_array_equal(pp.unpad(padded, npad), sino)
    np.testing.assert_array_equal(pp.unpad(pp.pad_edge(sino, (2, 5), axis=0), (2, 5), axis=0), sino)


def test_circular_mask():
    vol = np.ones((2, 21, 21), dtype=np.float32)
    out = pp.circular_mask(vol, 0.5)
    assert out[0, 10, 10] == 1 and out[0, 0, 0] == 0 and out[1, 10, 15] == 1 and out[1, 10, 16] == 0
    assert int(out[0].sum()) == int(((np.indices((21, 21)) - 10) ** 2).sum(0).__le__(5.25**2).sum())
    with pytest.raises(ValueError):
        pp.circular_mask(vol, 0)
    for shape, ratio in (((3, 21, 21), 0.5), ((2, 16, 16), 0.95), ((1, 9, 9), 0.05)):
        rand = np.random.default_rng(0).random(shape).astype(np.float32)
        expect = pp.circular_mask(rand, ratio, val=-1.0)
        assert pp.circular_mask(rand, ratio, val=-1.0, in_place=True) is rand  # row slices, in place
        np.testing.assert_array_equal(rand, expect)


# -- stripes --------------------------------------------------------------------------------------
def test_remove_stripe_fw_matches_tomopy(shared_data):
    proj = _load(shared_data, "proj")
    expected = _load(shared_data, "remove_stripe_fw")
    out = remove_rings(proj, RingRemoval(method="fw"))  # TomoPy defaults: db5, sigma 2, level auto
    np.testing.assert_allclose(out, expected, rtol=1e-2, atol=1e-3)
    assert _corr(out, expected) > 0.9999


@pytest.mark.parametrize("ring", [RingRemoval(method="fw", level=3), RingRemoval(method="sort", size=11)])
@pytest.mark.parametrize("nx", [128, 127])
def test_stripe_removal_reduces_injected_stripes(ring, nx):
    clean = _smooth_sino(nx=nx)
    cols = [20, 41, 42, 70, 100]
    offsets = np.zeros(nx, dtype=np.float32)
    offsets[cols] = [0.3, -0.25, 0.2, 0.35, 0.3]
    fixed = remove_rings((clean + offsets)[:, None, :], ring)[:, 0, :]
    untouched = remove_rings(clean[:, None, :], ring)[:, 0, :]
    injected = np.abs(offsets[cols])
    left = _stripe_amplitude(fixed - clean, cols)
    assert left.mean() < 0.25 * injected.mean() and np.all(left < 0.5 * injected)
    rel_change = np.sqrt(np.mean((untouched - clean) ** 2)) / np.sqrt(np.mean(clean**2))
    assert rel_change < 0.06  # a clean sinogram is barely touched


def test_stripe_functions_validate_input():
    with pytest.raises(ValueError, match="sinogram"):
        remove_stripe_fw(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="size"):
        remove_stripe_sort(np.zeros((8, 8)), size=1)
    with pytest.raises(ValueError, match="n_angles, nz, nx"):
        remove_rings(np.zeros((8, 8)), RingRemoval())


# -- phase retrieval ------------------------------------------------------------------------------
def test_paganin_matches_tomopy_retrieve_phase(shared_data):
    """TomoPy's stored result (pixel 1e-4 cm, 50 cm, 20 keV, alpha 1e-3) is the Paganin filter
    with delta/beta = 1 / (4 pi^2 alpha) in its frequency units, before its -log."""
    proj = _load(shared_data, "proj")
    expected = _load(shared_data, "retrieve_phase")
    out = paganin(proj, pixel_size_um=1.0, distance_mm=500.0, energy_kev=20.0,
                  delta_beta=1.0 / (4 * math.pi**2 * 1e-3))
    assert out.shape == proj.shape and out.dtype == np.float32
    assert _corr(proj, expected) < 0.98  # the comparison below is not trivially met
    assert _corr(out, expected) > 0.9999
    assert np.abs(out - expected).max() < 0.02 * expected.max()


def test_paganin_properties():
    flat = np.full((2, 16, 20), 0.7, dtype=np.float32)
    np.testing.assert_allclose(paganin(flat, 1.0, 100.0, 20.0, 100.0), 0.7, rtol=1e-5)
    f = paganin_filter((8, 8), 1.0, 100.0, 20.0, 100.0)
    assert f[0, 0] == 1 and f.max() == 1 and f.min() > 0
    assert abs(wavelength_m(12.398) - 1.0e-10) < 1e-13
    frame = np.random.default_rng(0).random((9, 11)).astype(np.float32)
    assert paganin(frame, 1.0, 100.0, 20.0).shape == (9, 11)
    with pytest.raises(ValueError, match="distance_mm"):
        paganin(frame, 1.0, 0.0, 20.0)
