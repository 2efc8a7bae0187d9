"""The pipeline entry point: raw frames -> normalised -> centre -> slices, binning, rows, odd widths."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_tomo_hpc.engine.nufft_spread import DEFAULT_EPS
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.projector import ellipse_image, ellipse_sinogram
from bluesky_tomo_hpc.engine.reconstruct import (
    ReconResult,
    bin_frames,
    preprocess_projections,
    reconstruct_scan,
    reconstruct_sinograms,
    to_binned,
    to_unbinned,
)
from bluesky_tomo_hpc.model import MissingCalibrationError, ScanData, TomoDataError

MU = 0.03  # attenuation per pixel of phantom value 1: keeps transmission in a realistic range


def make_scan(n_obj=64, n_det=80, ny=6, n_angles=120, center=42.0, seed=0) -> ScanData:
    """Raw counts of the modified Shepp-Logan phantom, one scaled copy per detector row."""
    rng = np.random.default_rng(seed)
    theta = np.linspace(0, np.pi, n_angles, endpoint=False)
    sino = ellipse_sinogram(n_obj, theta, n_det=n_det, center=center)
    scale = 1.0 + 0.1 * np.arange(ny)
    line = MU * sino[:, None, :] * scale[None, :, None]
    dark, flat = 100.0, 20000.0
    proj = dark + (flat - dark) * np.exp(-line)
    flats = np.full((4, ny, n_det), flat) + rng.normal(0, 1, (4, ny, n_det))
    darks = np.full((3, ny, n_det), dark) + rng.normal(0, 1, (3, ny, n_det))
    return ScanData(projections=np.round(proj).astype(np.uint16), theta=theta,
                    darks=darks.astype(np.uint16), flats=flats.astype(np.uint16), run_uid="sim-1")


def _truth_on_detector_grid(n_obj: int, n_det: int) -> np.ndarray:
    """Phantom image (value units) embedded in the ``n_det`` reconstruction grid."""
    img = ellipse_image(n_obj, supersample=4)
    pad = (n_det - n_obj) // 2
    return np.pad(img, ((pad, n_det - n_obj - pad), (pad, n_det - n_obj - pad)))


def test_binning_helpers_round_trip():
    assert to_binned(to_unbinned(10.25, 2), 2) == pytest.approx(10.25)
    assert to_unbinned(0.0, 2) == 0.5  # binned pixel 0 covers unbinned 0 and 1
    a = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    b = bin_frames(a, 2)
    assert b.shape == (2, 2, 3) and b[0, 0, 0] == pytest.approx((0 + 1 + 7 + 8) / 4)
    with pytest.raises(TomoDataError, match="binning 8 is larger than the frame"):
        bin_frames(a, 8)


def test_given_centre_is_quantitative():
    data = make_scan()
    res = reconstruct_scan(data, ReconParams(center=42.0, filter_name="hann"))
    assert isinstance(res, ReconResult)
    assert res.volume.shape == (6, 80, 80) and res.volume.dtype == np.float32
    assert (res.center, res.center_confidence, res.center_method) == (42.0, 1.0, "given")
    assert res.rows == (0, 6) and res.engine == "native"
    assert set(res.timings) >= {"preprocess", "center", "reconstruct", "total"}
    # the object is centred on the axis, so it sits in the middle of the 80-px slice
    truth = _truth_on_detector_grid(64, 80) * MU
    box = (slice(37, 43), slice(20, 25))  # inside the 0.2-valued body, left of the ventricles
    for z in (0, 5):
        expect = float(truth[box].mean()) * (1 + 0.1 * z)
        assert float(res.volume[z][box].mean()) == pytest.approx(expect, rel=0.03)
    # circular mask applied
    assert res.volume[0, 0, 0] == 0.0 and res.volume[0, 40, 1] == 0.0


@pytest.mark.parametrize("algorithm", ["fourier", "fbp"])
def test_auto_centre_off_middle_and_rows(algorithm):
    data = make_scan(ny=8, center=42.0)
    res = reconstruct_scan(data, ReconParams(algorithm=algorithm), rows=(2, 6))
    assert res.center == pytest.approx(42.0, abs=0.5)
    assert 0.0 < res.center_confidence <= 1.0 and res.center_method
    assert res.rows == (2, 6) and res.volume.shape == (4, 80, 80)
    given = reconstruct_scan(data, ReconParams(algorithm=algorithm, center=42.0, rows=(2, 6)))
    m = given.volume != 0
    assert np.corrcoef(res.volume[m], given.volume[m])[0, 1] > 0.98


def test_odd_width_and_binning_report_unbinned_centre():
    true_c = 41.5
    data = make_scan(n_det=81, ny=8, center=true_c)
    res = reconstruct_scan(data, ReconParams(binning=2, center="auto"))
    assert res.volume.shape == (4, 40, 40)
    assert res.center == pytest.approx(true_c, abs=1.0)
    fixed = reconstruct_scan(data, ReconParams(binning=2), center=true_c)
    assert fixed.center == pytest.approx(true_c)
    # still quantitative, per binned voxel (twice the unbinned pixel): body value 0.2, rows 0-1 scaled
    body = fixed.volume[0][16:22, 11:13]
    assert float(body.mean()) == pytest.approx(2 * 0.2 * MU * 1.05, rel=0.08)


def test_odd_width_unbinned():
    data = make_scan(n_det=79, ny=2, center=39.0)
    res = reconstruct_scan(data, ReconParams(center=39.0))
    assert res.volume.shape == (2, 79, 79)
    assert np.isfinite(res.volume).all() and res.volume.max() > 0


def test_rows_are_detector_rows_when_the_loader_read_a_slab():
    data = make_scan(ny=4)
    data.metadata = {"rows": [10, 14]}  # what sources.files.load_scan records for rows=(10, 14)
    res = reconstruct_scan(data, ReconParams(center=42.0, rows=(11, 13)))
    assert res.rows == (11, 13) and res.volume.shape == (2, 80, 80)
    whole = reconstruct_scan(data, ReconParams(center=42.0))
    # paired differently (rows 11+12 here, 10+11 and 12+13 there): each pair partner leaves a
    # ghost below the NUFFT's eps (test_engine_recon.py::test_default_nufft_accuracy...)
    np.testing.assert_allclose(res.volume, whole.volume[1:3], atol=DEFAULT_EPS * float(whole.volume.max()))
    with pytest.raises(TomoDataError, match=r"rows \[0, 2\) outside the detector's rows \[10, 14\)"):
        reconstruct_scan(data, ReconParams(center=42.0), rows=(0, 2))
    data.metadata = {"rows": [10, 14], "binning": 2}
    with pytest.raises(TomoDataError, match="loaded with binning 2 but the parameters ask for binning 1"):
        reconstruct_scan(data, ReconParams(center=42.0))


def test_preprocess_outputs_line_integrals():
    data = make_scan(ny=3)
    proj_log, theta, warnings = preprocess_projections(data, ReconParams(), rows=(1, 3))
    assert proj_log.shape == (120, 2, 80) and proj_log.dtype == np.float32
    assert warnings == [] and np.allclose(theta, data.theta)
    expect = MU * ellipse_sinogram(64, data.theta, n_det=80, center=42.0) * 1.1
    assert np.abs(proj_log[:, 0] - expect).max() < 2e-3  # counts rounding only


def test_reconstruct_sinograms_streams_into_out_in_chunks():
    data = make_scan(ny=5)
    params = ReconParams(chunk_slices=2)
    proj_log, theta, _ = preprocess_projections(data, params)
    out = np.zeros((5, 80, 80), np.float32)
    seen: list[int] = []
    reconstruct_sinograms(proj_log, theta, 42.0, params, out=out, progress=lambda d, t: seen.append(d))
    assert seen == [2, 4, 5] and np.abs(out).max() > 0


def test_clear_errors():
    data = make_scan(ny=2)
    no_flats = ScanData(projections=data.projections, theta=data.theta, darks=data.darks,
                        flats=np.empty((0, 2, 80), np.uint16), run_uid="r-7")
    with pytest.raises(MissingCalibrationError, match="flats"):
        reconstruct_scan(no_flats, ReconParams(center=42.0))
    with pytest.raises(TomoDataError, match=r"rows \[1, 9\) outside the detector.s rows \[0, 2\)"):
        reconstruct_scan(data, ReconParams(center=42.0), rows=(1, 9))
    with pytest.raises(TomoDataError, match="far outside the detector"):
        reconstruct_scan(data, ReconParams(), center=1e4)


def test_tooth_real_data_centre(shared_data):
    from bluesky_tomo_hpc.sources.raw_files import load_scan

    data = load_scan(shared_data / "tomopy_tooth" / "tooth.h5")
    res = reconstruct_scan(data, ReconParams())
    assert res.center == pytest.approx(296.0, abs=1.0)  # TomoPy's documented 296 (pixel-index)
    assert res.center_confidence > 0.5
    assert res.volume.shape == (2, 640, 640) and np.isfinite(res.volume).all()
    assert res.center_method == "auto:negative-mass"  # the least negative mass on both halves of the data
    # the slice is sharpest (least total variation) within a pixel of the automatic centre
    from bluesky_tomo_hpc.engine.center import total_variation
    from bluesky_tomo_hpc.engine.reconstruct import preprocess_projections, reconstruct_sinograms

    proj_log, theta, _ = preprocess_projections(data, ReconParams())
    cands = np.arange(290.0, 302.01, 1.0)
    tv = [total_variation(reconstruct_sinograms(proj_log[:, :1], theta, c, ReconParams())[0]) for c in cands]
    assert abs(cands[int(np.argmin(tv))] - res.center) <= 1.0
    assert min(tv[0], tv[-1]) > 1.002 * min(tv)  # a noisy scan: a small but clear minimum
    # real, noisy data: both methods agree at TomoPy's centre (one row keeps the fbp run short)
    params = ReconParams(center=296.0, filter_name="parzen", rows=(0, 1))
    fourier = reconstruct_scan(data, params)
    fbp = reconstruct_scan(data, params.with_updates(algorithm="fbp"))
    m = fbp.volume != 0
    assert np.corrcoef(fourier.volume[m], fbp.volume[m])[0, 1] > 0.995


def test_reconstruct_scan_same_on_every_backend(array_backend):
    """The GPU path (raw slabs through the conveyor, normalised on the device) gives the CPU's
    slices; on NumPy this pins the reference the GPU is compared with."""
    data = make_scan(ny=5)
    ref = reconstruct_scan(data, ReconParams(center=42.0, device="cpu"))
    got = reconstruct_scan(data, ReconParams(center=42.0, device=array_backend, chunk_slices=2))
    assert got.volume.shape == ref.volume.shape == (5, 80, 80)
    tol = 2e-3 * float(np.abs(ref.volume).max())
    np.testing.assert_allclose(got.volume, ref.volume, atol=tol)
    if array_backend == "cpu":  # the GPU's slab path itself, run through the CPU loop
        from bluesky_tomo_hpc.engine.reconstruct import _reconstruct_scan_slabs

        slabs = _reconstruct_scan_slabs(data, ReconParams(center=42.0, device="cpu", chunk_slices=2),
                                        rows=None, center=None, progress=None, out=None)
        np.testing.assert_allclose(slabs.volume, ref.volume, atol=tol)
        assert slabs.center == ref.center and slabs.rows == ref.rows
