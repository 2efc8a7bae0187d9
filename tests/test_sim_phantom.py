"""The phantom's analytic projections and the detector physics, without any RunEngine."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_tomo_hpc.sim import DetectorPhysics, Ellipsoid, FrameSimulator, Phantom, shepp_logan_3d


def test_sphere_chord_lengths_are_exact():
    r, mu = 10.0, 0.05
    ph = Phantom((Ellipsoid(mu, (r, r, r), (0.0, 0.0, 0.0)),))
    p = ph.line_integrals(0.3, (21, 41))  # axis on column 20, row 10
    s = np.arange(41) - 20.0
    expected = 2 * mu * np.sqrt(np.clip(r**2 - s**2, 0, None))
    np.testing.assert_allclose(p[10], expected, atol=1e-12)
    z = np.arange(21) - 10.0
    np.testing.assert_allclose(p[:, 20], 2 * mu * np.sqrt(np.clip(r**2 - z**2, 0, None)), atol=1e-12)


def test_rotated_ellipse_projection_matches_rotation_of_the_angle():
    # An ellipse turned by phi, seen at theta, is the upright ellipse seen at theta - phi.
    e0 = Phantom((Ellipsoid(0.1, (12.0, 5.0, 6.0), (0.0, 0.0, 0.0), 0.0),))
    e30 = Phantom((Ellipsoid(0.1, (12.0, 5.0, 6.0), (0.0, 0.0, 0.0), 30.0),))
    theta = np.deg2rad(50.0)
    np.testing.assert_allclose(
        e30.line_integrals(theta, (8, 40)), e0.line_integrals(theta - np.deg2rad(30), (8, 40)), atol=1e-12
    )


def test_axis_offset_shifts_the_projection():
    ph = shepp_logan_3d((16, 64))
    p0 = ph.line_integrals(0.7, (16, 64), axis_offset_px=0.0)
    p3 = ph.line_integrals(0.7, (16, 64), axis_offset_px=3.0)
    np.testing.assert_allclose(p3[:, 3:], p0[:, :-3], atol=1e-12)
    # and 180 degrees later the projection is mirrored about the axis column
    p180 = ph.line_integrals(0.7 + np.pi, (16, 64), axis_offset_px=0.0)
    np.testing.assert_allclose(p180[:, ::-1], p0, atol=1e-9)


def test_projection_is_the_radon_transform_of_the_voxelised_phantom():
    from skimage.transform import radon

    n = 63  # odd, so skimage's centre (n // 2) is the phantom's centre
    ph = shepp_logan_3d((8, n))
    vol = ph.voxelise((8, n, n), supersample=3)
    for deg in (0.0, 37.0, 90.0, 151.0):
        numeric = radon(vol[4], theta=[deg], circle=False)[:, 0]
        c = len(numeric) // 2
        numeric = numeric[c - n // 2 : c + n // 2 + 1]
        analytic = ph.line_integrals(np.deg2rad(deg), (8, n))[4]
        assert np.corrcoef(numeric, analytic)[0, 1] > 0.985, deg
        assert np.abs(numeric - analytic).mean() < 0.04, deg
        if deg:  # the opposite handedness (y flipped) would match -theta instead
            mirrored = ph.line_integrals(np.deg2rad(-deg), (8, n))[4]
            assert np.corrcoef(numeric, mirrored)[0, 1] < 0.97, deg


def test_shepp_logan_scaling_and_field_of_view():
    shape = (64, 128)
    ph = shepp_logan_3d(shape, peak_line_integral=1.5)
    sino = ph.sinogram(np.deg2rad(np.arange(0, 180, 10)), shape, axis_offset_px=3.5)
    assert 1.3 < sino.max() < 1.8
    assert np.all(sino[:, :, :4] == 0) and np.all(sino[:, :, -4:] == 0), "phantom leaves the field of view"
    assert sino.min() >= 0
    with pytest.raises(ValueError, match="too small"):
        shepp_logan_3d((2, 4))


def _normalise(proj, darks, flats):
    d = darks.mean(axis=0)
    return -np.log((proj - d) / (flats.mean(axis=0) - d))


def test_detector_counts_noise_and_normalisation():
    physics = DetectorPhysics(shape=(32, 64), photons=2e4, dark_offset=100.0, read_noise=2.0)
    sim = FrameSimulator(shepp_logan_3d((32, 64)), physics, rotation_offset_px=2.5, seed=7)
    darks = np.stack([sim.acquire(angle_deg=0, shutter_open=False, sample_in=True) for _ in range(20)])
    flats = np.stack([sim.acquire(angle_deg=0, shutter_open=True, sample_in=False) for _ in range(20)])
    proj = sim.acquire(angle_deg=30.0, shutter_open=True, sample_in=True).astype(float)
    assert darks.dtype == np.uint16 and proj.shape == (32, 64)
    assert abs(darks.mean() - 100.0) < 0.5 and 1.5 < darks.std() < 2.5
    np.testing.assert_allclose(flats.mean(axis=0) - 100, physics.expected_flat(), rtol=0.02)
    # Poisson: variance of flats equals their mean (minus the read noise)
    var = (flats.astype(float).var(axis=0, ddof=1) - 4.0).mean()
    assert 0.85 < var / (flats.mean() - 100) < 1.15
    # a normalised projection is the analytic line integral within photon noise
    err = _normalise(proj, darks, flats) - sim.expected_line_integrals(30.0)
    sigma = 1 / np.sqrt(physics.photons * 0.2)  # worst case: 20 % transmission
    assert np.sqrt(np.mean(err**2)) < 2 * sigma
    assert abs(err.mean()) < sigma  # no bias: darks and flats are handled right


def test_simulator_is_deterministic_per_seed():
    physics = DetectorPhysics(shape=(8, 16))
    a = FrameSimulator(shepp_logan_3d((8, 16)), physics, seed=3)
    b = FrameSimulator(shepp_logan_3d((8, 16)), physics, seed=3)
    c = FrameSimulator(shepp_logan_3d((8, 16)), physics, seed=4)
    fa = [a.acquire(angle_deg=x, shutter_open=True, sample_in=True) for x in (0, 10)]
    fb = [b.acquire(angle_deg=x, shutter_open=True, sample_in=True) for x in (0, 10)]
    fc = c.acquire(angle_deg=0, shutter_open=True, sample_in=True)
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb, strict=True))
    assert not np.array_equal(fa[0], fc)


def test_flat_drift_and_counts_clip_at_uint16():
    drift = DetectorPhysics(shape=(8, 16), flat_drift_per_frame=0.01)
    assert drift.expected_flat(10).mean() == pytest.approx(1.1 * drift.expected_flat(0).mean())
    hot = DetectorPhysics(shape=(8, 16), photons=1e6)
    frame = hot.counts(None, beam_on=True, frame_number=0, rng=np.random.default_rng(0))
    assert frame.max() == np.iinfo(np.uint16).max
    with pytest.raises(ValueError, match="ring_columns"):
        DetectorPhysics(shape=(8, 16), ring_columns={16: 0.1})


def _ring_strength(ring_columns: dict[int, float], column: int) -> float:
    physics = DetectorPhysics(shape=(16, 64), ring_columns=ring_columns)
    sim = FrameSimulator(shepp_logan_3d((16, 64)), physics, rotation_offset_px=0.0, seed=1)
    darks = np.stack([sim.acquire(angle_deg=0, shutter_open=False, sample_in=True) for _ in range(10)])
    flats = np.stack([sim.acquire(angle_deg=0, shutter_open=True, sample_in=False) for _ in range(10)])
    sino = np.stack(
        [
            _normalise(sim.acquire(angle_deg=a, shutter_open=True, sample_in=True), darks, flats)
            for a in np.linspace(0, 180, 30, endpoint=False)
        ]
    )
    stripe = sino[:, :, column] - 0.5 * (sino[:, :, column - 1] + sino[:, :, column + 1])
    return float(stripe.mean())


def test_ring_columns_make_a_stripe_in_the_sinogram():
    col = 26  # inside the phantom's shadow at every angle
    assert abs(_ring_strength({}, col)) < 0.01
    assert _ring_strength({col: 0.3}, col) > 0.05


def test_fbp_at_the_true_rotation_centre_recovers_the_voxelised_phantom():
    from skimage.transform import iradon

    shape, offset, row, n = (32, 64), 3.5, 20, 63  # odd n: skimage's centre n // 2 is exact
    sim = FrameSimulator(shepp_logan_3d(shape), DetectorPhysics(shape=shape), rotation_offset_px=offset)
    dark = np.mean([sim.acquire(angle_deg=0, shutter_open=False, sample_in=True) for _ in range(5)], axis=0)
    flat = np.mean([sim.acquire(angle_deg=0, shutter_open=True, sample_in=False) for _ in range(5)], axis=0)
    angles = np.linspace(0, 180, 90, endpoint=False)
    sino = np.stack(
        [
            _normalise(sim.acquire(angle_deg=a, shutter_open=True, sample_in=True), dark, flat)[row]
            for a in angles
        ]
    )
    truth = sim.phantom.voxelise((shape[0], n, n), supersample=2)[row]

    def corr(centre: float) -> float:
        cols = np.arange(n) - n // 2 + centre  # detector column that lands on each sinogram bin
        s = np.stack([np.interp(cols, np.arange(shape[1]), p, left=0, right=0) for p in sino], axis=1)
        rec = iradon(s, theta=angles, circle=False, output_size=n, filter_name="ramp")
        return float(np.corrcoef(rec.ravel(), truth.ravel())[0, 1])

    centre = (shape[1] - 1) / 2 + offset
    assert corr(centre) > 0.95
    assert corr(centre - 1.5) < 0.9  # the offset matters: the middle of the detector is wrong


def test_voxelise_in_slabs_and_the_demo_quality_check_stay_bounded():
    """A slab of the grid is the same slices as the whole grid; the demo's correlation with the
    phantom, taken slab by slab, equals the one-shot Pearson and allocates less than the volume."""
    import tracemalloc

    from bluesky_tomo_hpc.live.demo_run import phantom_correlation

    ph = shepp_logan_3d((32, 128))
    shape = (32, 128, 128)
    whole = ph.voxelise(shape, supersample=2)
    np.testing.assert_array_equal(ph.voxelise(shape, supersample=2, slices=(5, 19)), whole[5:19])
    with pytest.raises(ValueError, match=r"slices \[30, 40\) outside the grid's 32 slices"):
        ph.voxelise(shape, slices=(30, 40))
    rng = np.random.default_rng(0)
    big = (98, 128, 128)
    vol = (ph.voxelise(big) + rng.normal(0, 0.005, big)).astype(np.float32)
    yy, xx = np.mgrid[:128, :128]
    disc = np.hypot(yy - 63.5, xx - 63.5) <= 0.9 * 64
    expected = np.corrcoef(vol[:, disc].ravel(), ph.voxelise(big)[:, disc].ravel())[0, 1]
    tracemalloc.start()
    got = phantom_correlation(vol, ph, slab_voxels=4 * 128 * 128)  # 25 slabs, the last short
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0.5 < got < 0.999
    # at once it took 4 float64 copies of the volume; in slabs a few slices' worth
    assert peak < 0.6 * vol.nbytes, f"{peak / 1e6:.1f} MB allocated for a {vol.nbytes / 1e6:.1f} MB volume"
