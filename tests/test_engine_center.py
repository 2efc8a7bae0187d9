"""Rotation-centre finding on TomoPy's test data, the real APS tooth scan and synthetic scans.

Convention: centres are 0-based column indices (centred axis of an N-wide detector: (N - 1) / 2).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy.ndimage import shift as nd_shift

from bluesky_tomo_hpc.engine.center import (
    CenterEstimate,
    center_from_pair,
    find_center,
    find_center_pairs,
    find_center_vo,
    phase_correlation_shift,
    try_centers,
)
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.preprocess import minus_log, normalize
from bluesky_tomo_hpc.model import TomoDataError
from bluesky_tomo_hpc.results.pictures import save_center_sheet_png


def blob_sinogram(
    n_angles: int, nx: int, center: float, *, span: float = np.pi, ny: int = 1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(theta, -log projections (n_angles, ny, nx)) of Gaussian blobs rotating about ``center``."""
    rng = np.random.default_rng(seed)
    theta = np.linspace(0, span, n_angles, endpoint=False)
    r, phi = 0.3 * nx * np.sqrt(rng.uniform(0, 1, 12)), rng.uniform(0, 2 * np.pi, 12)
    width, amp = rng.uniform(1.5, 0.08 * nx, 12), rng.uniform(0.2, 1.0, 12)
    pos = (r * np.cos(phi))[None] * np.cos(theta)[:, None] + (r * np.sin(phi))[None] * np.sin(theta)[:, None]
    cols = np.arange(nx)[None, :, None]
    sino = (amp * np.exp(-0.5 * ((cols - center - pos[:, None, :]) / width) ** 2)).sum(-1) * 0.5
    return theta, np.repeat(sino[:, None, :], ny, axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def tooth(shared_data):
    with h5py.File(shared_data / "tomopy_tooth" / "tooth.h5", "r") as f:
        data = f["/exchange/data"][:]
        flats = f["/exchange/data_white"][:]
        darks = f["/exchange/data_dark"][:]
        theta_deg = f["/exchange/theta"][:]
    return normalize(data, flats, darks), theta_deg


# -- reference data -------------------------------------------------------------------------------
def test_vo_on_tomopy_sinogram(shared_data):
    sino = np.load(shared_data / "tomopy_testdata" / "sinogram.npy")[:, 0, :]
    est = find_center_vo(sino, np.linspace(0, np.pi, sino.shape[0]))
    assert abs(est.center - 45.28) <= 1.0  # TomoPy's find_center / find_center_vo value
    assert est.method == "vo" and est.confidence > 0.5


def test_pair_registration_on_tomopy_projection(shared_data):
    """TomoPy's test: mirror shifted by 18.75 px -> its 73.375, i.e. 72.875 as a pixel index."""
    p0 = np.load(shared_data / "tomopy_testdata" / "projection.npy")
    p180 = nd_shift(np.fliplr(p0), (0, 18.75), mode="reflect")
    center, peak = center_from_pair(p0, p180)
    assert abs(center - (73.375 - 0.5)) < 0.1
    assert peak > 0.5


def test_pipeline_centre_reads_line_integrals_unclipped(shared_data):
    """TomoPy's synthetic projections are line integrals up to 44: an exp / -log round trip
    before the search clipped two thirds of them at -log(1e-6), and the centre moved 0.46 px."""
    from bluesky_tomo_hpc.engine.reconstruct import find_center as pipeline_find_center

    proj = np.load(shared_data / "tomopy_testdata" / "proj.npy").astype(np.float32)
    est = pipeline_find_center(proj, np.linspace(0, np.pi, 16, endpoint=False), ReconParams())
    assert abs(est.center - 23.5) <= 0.25 and est.confidence >= 0.5, (est.center, est.confidence)


def test_phase_correlation_recovers_subpixel_shift():
    rng = np.random.default_rng(5)
    fy, fx = np.fft.fftfreq(64)[:, None], np.fft.fftfreq(80)[None, :]
    spec = np.fft.fft2(rng.random((64, 80))) * np.exp(-(fy**2 + fx**2) / 0.02)  # a smooth image
    img = np.fft.ifft2(spec).real
    moved = np.fft.ifft2(spec * np.exp(-2j * np.pi * (fy * -2.3 + fx * 5.6))).real  # exact shift
    moved += 0.02 * img.std() * rng.standard_normal(img.shape)
    dy, dx, peak = phase_correlation_shift(img, moved)
    assert abs(dy + 2.3) < 0.1 and abs(dx - 5.6) < 0.1 and peak > 0.5
    _, _, unrelated = phase_correlation_shift(img, rng.random((64, 80)))
    assert unrelated < 0.3


# -- the real tooth scan --------------------------------------------------------------------------
def test_tooth_auto_center(tooth):
    proj_norm, theta_deg = tooth
    est = find_center(proj_norm, theta_deg, ReconParams())
    assert abs(est.center - 296) <= 1.0, est
    assert 0.5 < est.confidence <= 1.0
    assert est.method.startswith("auto")
    assert "degrees" in est.details["angle_warning"]  # theta was given in degrees and detected
    assert abs(est.details["pairs"].center - est.details["vo"].center) < 2


def test_tooth_pairs_use_nearest_projection(tooth):
    proj_norm, theta_deg = tooth
    est = find_center_pairs(proj_norm, np.deg2rad(theta_deg))
    assert abs(est.center - 296) <= 1.0
    assert est.details["pairs"] == [(0, 180)]  # 0 and 179.0 degrees: no exact 180 pair exists
    assert abs(est.details["angle_mismatch_deg"] - 180 / 181) < 1e-6
    assert est.confidence < 0.6  # the mismatch lowers it


# -- synthetic scans with a known axis ------------------------------------------------------------
@pytest.mark.parametrize(("nx", "center"), [(101, 47.3), (128, 70.6), (127, 63.0)])
def test_vo_recovers_known_center_odd_and_even(nx, center):
    theta, proj_log = blob_sinogram(180, nx, center)
    est = find_center_vo(proj_log[:, 0, :], theta)
    assert abs(est.center - center) < 0.3
    assert est.confidence > 0.8


def test_vo_binned_fine_search_and_coarse_only_keep_the_centre():
    """The speed options of the wide search: the fine search on binned columns of a wide
    detector, and a coarse-only first pass, find the same axis (in unbinned columns)."""
    theta, proj_log = blob_sinogram(180, 1024, 530.3)
    sino = proj_log[:, 0, :]
    full = find_center_vo(sino, theta, 8.0, center_guess=528.0, fine_radius=1.0)
    binned = find_center_vo(sino, theta, 8.0, center_guess=528.0, fine_radius=1.0, max_fine_cols=512)
    assert abs(binned.center - full.center) < 0.1 and abs(binned.center - 530.3) < 0.5
    coarse = find_center_vo(sino, theta, 64.0, fine_radius=0.0, max_cols=256)
    assert abs(coarse.center - 530.3) <= 2.5 and "fine_centers" not in coarse.details


def test_pairs_recover_known_center_on_360_scan():
    theta, proj_log = blob_sinogram(240, 96, 50.4, span=2 * np.pi, ny=3)
    est = find_center_pairs(np.exp(-proj_log), theta)
    assert abs(est.center - 50.4) < 0.25
    assert len(est.details["pairs"]) == 5 and est.details["angle_mismatch_deg"] < 1e-9
    vo = find_center(np.exp(-proj_log), theta, ReconParams(center_method="vo"))
    assert abs(vo.center - 50.4) < 0.3  # Vo uses the first half-turn of a 360 scan


def test_noise_gives_low_confidence():
    rng = np.random.default_rng(1)
    theta = np.linspace(0, np.pi, 180, endpoint=False)
    confidences = [find_center_vo(rng.standard_normal((180, 128)), theta).confidence for _ in range(3)]
    assert max(confidences) < 0.4


def test_manual_center_and_method_dispatch():
    theta, proj_log = blob_sinogram(120, 64, 30.2, ny=2)
    proj = np.exp(-proj_log)
    manual = find_center(proj, theta, ReconParams(center=31.5))
    assert (manual.center, manual.confidence, manual.method) == (31.5, 1.0, "manual")
    pairs = find_center(proj, theta, ReconParams(center_method="pairs"))
    assert pairs.method == "pairs"
    with pytest.raises(TomoDataError, match="119 angles for 120"):
        find_center(proj, theta[:-1], ReconParams())
    with pytest.raises(ValueError, match="confidence"):
        CenterEstimate(1.0, 1.5, "x")


# -- try mode -------------------------------------------------------------------------------------
def test_try_centers_contact_sheet(tmp_path):
    theta, proj_log = blob_sinogram(180, 64, 33.0, ny=3)
    params = ReconParams(algorithm="fbp", engine="native")
    cands = [29.0, 31.0, 33.0, 35.0, 37.0]
    out = try_centers(proj_log, theta, cands, params, row=1)
    png = save_center_sheet_png(out, tmp_path / "sheet.png", row=67, highlight=33.0)
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    slices = [out[c] for c in cands]
    assert all(s.shape == (64, 64) for s in slices)
    # the right axis gives the sharpest, least smeared slice: smallest total variation
    tv = [float(np.abs(np.diff(s, axis=0)).sum() + np.abs(np.diff(s, axis=1)).sum()) for s in slices]
    assert int(np.argmin(tv)) == 2
    with pytest.raises(TomoDataError, match="row 3"):
        try_centers(proj_log, theta, cands, params, row=3)


def test_vo_refuses_nan_and_tiny_input():
    theta = np.linspace(0, np.pi, 30, endpoint=False)
    bad = np.ones((30, 40), dtype=np.float32)
    bad[3, 4] = np.nan
    with pytest.raises(TomoDataError, match="NaN"):
        find_center_vo(bad, theta)
    with pytest.raises(TomoDataError, match="too small"):
        find_center_vo(np.ones((30, 5)), theta)
    assert np.isfinite(minus_log(bad)).all()
