"""Live three-slice preview: accuracy against an analytic phantom, back-pressure, latency."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bluesky_tomo_hpc.engine.projector import ellipse_image, ellipse_sinogram
from bluesky_tomo_hpc.model import FrameBatch, FrameRole, ScanEnd, ScanSpec
from bluesky_tomo_hpc.sinks.preview import PreviewSink, bin_frames

MU = 0.02  # attenuation per pixel of the phantom's unit value
FLAT, DARK = 3000.0, 100.0


def z_profile(nz: int) -> np.ndarray:
    """The phantom is the 2-D Shepp-Logan times this profile along z (a step: full in the middle)."""
    z = np.arange(nz)
    return np.where(np.abs(z - (nz - 1) / 2) < nz / 4, 1.0, 0.5)


def phantom_scan(n: int = 64, nz: int = 16, n_angles: int = 90, center: float | None = None,
                 seed: int = 0, span: float = np.pi, n_det: int | None = None) -> dict:
    """Raw uint16 frames of a parallel-beam scan of a z-modulated Shepp-Logan (exact line
    integrals, Poisson-free), with a smooth flat field, plus darks, flats and the truth."""
    center = (n - 1) / 2.0 if center is None else center
    theta = np.linspace(0, span, n_angles, endpoint=False)
    n_det = n if n_det is None else n_det  # wider: the sample stays inside the field of view
    sino = ellipse_sinogram(n, theta, n_det=n_det, center=center) * MU  # (angles, n_det)
    prof = z_profile(nz)
    flat = FLAT * (1.0 + 0.2 * np.sin(np.linspace(0, np.pi, n_det)))[None, :] * np.ones((nz, 1))
    line = prof[None, :, None] * sino[:, None, :]  # (angles, nz, n)
    proj = flat[None] * np.exp(-line) + DARK
    rng = np.random.default_rng(seed)
    darks = DARK + rng.normal(0, 1, (4, nz, n_det))
    flats = flat[None] + DARK + rng.normal(0, 1, (4, nz, n_det))
    truth_xy = ellipse_image(n, supersample=4) * MU
    return {"theta": theta, "proj": proj.astype(np.uint16), "darks": darks.astype(np.uint16),
            "flats": flats.astype(np.uint16), "truth_xy": truth_xy, "prof": prof, "center": center}


def spec_for(scan: dict, uid: str = "run-1", **md) -> ScanSpec:
    n_angles, nz, n = scan["proj"].shape
    return ScanSpec(run_uid=uid, frame_shape=(nz, n), n_projections=n_angles, n_darks=4, n_flats=4,
                    angle_units="rad", metadata={"tomo": md})


def feed(sink: PreviewSink, scan: dict, *, flats_first: bool = True, chunk: int = 1,
         uid: str = "run-1") -> None:
    def batch(role, frames, start, angles=None):
        return FrameBatch(role, np.arange(start, start + len(frames)), frames, angles, run_uid=uid)

    sink.add(batch(FrameRole.DARK, scan["darks"], 0))
    if flats_first:
        sink.add(batch(FrameRole.FLAT, scan["flats"], 0))
    for i in range(0, len(scan["theta"]), chunk):
        sink.add(batch(FrameRole.PROJECTION, scan["proj"][i:i + chunk], i, scan["theta"][i:i + chunk]))
    if not flats_first:
        sink.add(batch(FrameRole.FLAT, scan["flats"], 0))


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def disc(n: int, r: float = 0.8) -> np.ndarray:
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    return np.hypot(x, y) < r * n / 2


@pytest.fixture(scope="module")
def scan():
    return phantom_scan()


def run_preview(scan: dict, **kwargs) -> tuple[PreviewSink, object]:
    updates = []
    sink = PreviewSink([updates.append], **{"publish_interval_s": 0.0, **kwargs})
    sink.open(spec_for(scan, **kwargs.pop("md", {})))
    feed(sink, scan)
    sink.close(ScanEnd("run-1"))
    final = sink.wait_final(timeout=30)
    return sink, final, updates


def test_final_preview_matches_phantom_in_three_planes(scan):
    sink, final, updates = run_preview(scan)
    n = scan["proj"].shape[2]
    nz = scan["proj"].shape[1]
    assert final.final and updates[-1] is final and len(updates) > 2
    assert [u.final for u in updates[-2:]] == [True, True]  # the final, then the centre-checked one
    assert not any(u.final for u in updates[:-2])
    xy = final.slices["xy"]
    m = disc(n)
    assert corr(xy[m], scan["truth_xy"][m]) > 0.9
    # quantitative: the large ellipse's interior (value 0.2 * MU) within 15 %
    inner = scan["truth_xy"] == np.float32(0.2 * MU)
    assert abs(np.median(xy[inner]) / (0.2 * MU) - 1) < 0.15
    # vertical slices: the truth is the xy truth's centre row / column times the z profile
    y0, x0 = final.indices["xz"], final.indices["yz"]
    truth_xz = scan["prof"][:, None] * scan["truth_xy"][y0][None, :]
    truth_yz = scan["prof"][:, None] * scan["truth_xy"][:, x0][None, :]
    assert final.slices["xz"].shape == final.slices["yz"].shape == (nz, n)
    assert corr(final.slices["xz"], truth_xz) > 0.9
    assert corr(final.slices["yz"], truth_yz) > 0.9
    md = final.metadata
    assert md["n_projections_used"] == 90 and md["n_projections_skipped"] == 0
    assert md["degraded"] is False and md["center_source"] == "detector middle"
    assert md["stop_to_final_s"] < 1.0


def test_off_centre_axis_uses_the_hint_from_metadata():
    scan = phantom_scan(center=34.7)
    sink = PreviewSink(publish_interval_s=10)
    sink.open(spec_for(scan, rotation_center_hint=34.7))
    feed(sink, scan)
    sink.close(ScanEnd("run-1"))
    good = sink.wait_final(30)
    assert good.metadata["center"] == 34.7 and good.metadata["center_source"] == "rotation_center_hint"
    m = disc(64)
    assert corr(good.slices["xy"][m], scan["truth_xy"][m]) > 0.9
    wrong = PreviewSink(center=31.5, publish_interval_s=10)
    wrong.open(spec_for(scan, rotation_center_hint=34.7))
    feed(wrong, scan)
    wrong.close(ScanEnd("run-1"))
    bad = wrong.wait_final(30)
    assert bad.metadata["center_source"] == "argument"
    good_corr = corr(good.slices["xy"][m], scan["truth_xy"][m])
    assert corr(bad.slices["xy"][m], scan["truth_xy"][m]) < good_corr - 0.1


def test_binning_halves_every_slice_and_keeps_the_image(scan):
    _, final, _ = run_preview(scan, binning=2)
    assert final.slices["xy"].shape == (32, 32) and final.slices["xz"].shape == (8, 32)
    truth = scan["truth_xy"].reshape(32, 2, 32, 2).mean(axis=(1, 3))
    m = disc(32)
    assert corr(final.slices["xy"][m], truth[m]) > 0.85
    assert final.metadata["binning"] == 2


def test_flats_after_projections_still_give_a_usable_preview(scan):
    sink = PreviewSink(publish_interval_s=10)
    sink.open(spec_for(scan))
    feed(sink, scan, flats_first=False)
    sink.close(ScanEnd("run-1"))
    final = sink.wait_final(30)
    # qualitative only (the flat profile leaves a smooth offset); the metadata says so
    assert final.metadata["n_projections_before_flat"] == 90 and final.metadata["n_flats"] == 4
    m = disc(64)
    assert corr(final.slices["xy"][m], scan["truth_xy"][m]) > 0.8


def test_back_pressure_skips_projections_says_so_and_still_finishes():
    scan = phantom_scan(n=128, nz=32, n_angles=180)
    frame_bytes = scan["proj"][0].nbytes
    sink = PreviewSink(max_queue_bytes=3 * frame_bytes, publish_interval_s=10)
    sink.open(spec_for(scan))
    t0 = time.perf_counter()
    feed(sink, scan)  # 180 frames offered at once, room for 3
    offered_s = time.perf_counter() - t0
    sink.close(ScanEnd("run-1"))
    final = sink.wait_final(30)
    md = final.metadata
    assert offered_s < 0.5  # add() never waited for the preview
    assert md["degraded"] is True and md["n_projections_skipped"] > 0
    assert md["n_projections_used"] + md["n_projections_skipped"] == 180
    assert md["peak_queued_bytes"] <= 3 * frame_bytes + scan["darks"].nbytes + scan["flats"].nbytes
    assert md["stop_to_final_s"] < 1.0


def test_final_within_budget_when_the_queue_is_deep_at_stop():
    scan = phantom_scan(n=128, nz=64, n_angles=180)
    sink = PreviewSink(publish_interval_s=10, final_budget_s=0.05)
    sink.open(spec_for(scan))
    feed(sink, scan)
    sink.close(ScanEnd("run-1"))
    final = sink.wait_final(30)
    assert final.metadata["stop_to_final_s"] < 1.0
    assert final.metadata["n_projections_used"] + final.metadata["n_projections_skipped"] == 180


def test_projection_without_angles_is_reported_not_raised_at_the_source(scan):
    sink = PreviewSink()
    sink.open(spec_for(scan))
    sink.add(FrameBatch(FrameRole.PROJECTION, np.arange(1), scan["proj"][:1]))
    sink.close(ScanEnd("run-1"))
    with pytest.raises(ValueError, match="without angles"):
        sink.wait_final(10)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="binning"):
        PreviewSink(binning=0)
    with pytest.raises(ValueError, match="fractions"):
        PreviewSink(positions=(0.5, 1.5, 0.5))


def test_bin_frames_is_a_block_mean():
    f = np.arange(2 * 4 * 6, dtype=np.uint16).reshape(2, 4, 6)
    b = bin_frames(f, 2)
    assert b.shape == (2, 2, 3) and b.dtype == np.float32
    assert b[0, 0, 0] == np.mean([0, 1, 6, 7])


def test_preview_equals_the_engine_fbp_of_the_same_frames(scan, array_backend):
    """Same filter, geometry and weights as engine.fbp: the live sum is the batch FBP, on the
    CPU and on a GPU (batched gathers there)."""
    from bluesky_tomo_hpc.engine.fbp import reconstruct_fbp

    _, final, _ = run_preview(scan, device=array_backend)
    proj = scan["proj"].astype(np.float64)
    dark = scan["darks"].mean(0)
    flat = scan["flats"].mean(0)
    line = -np.log((proj - dark) / (flat - dark)).astype(np.float32)  # (angles, nz, n)
    z0, y0, x0 = final.indices["xy"], final.indices["xz"], final.indices["yz"]
    vol = reconstruct_fbp(line.transpose(1, 0, 2), scan["theta"], scan["center"])  # (nz, n, n)
    np.testing.assert_allclose(final.slices["xy"], vol[z0], atol=1e-5 * np.abs(vol).max())
    np.testing.assert_allclose(final.slices["xz"], vol[:, y0, :], atol=1e-5 * np.abs(vol).max())
    np.testing.assert_allclose(final.slices["yz"], vol[:, :, x0], atol=1e-5 * np.abs(vol).max())


def _cropped(scan: dict, left: int) -> dict:
    """The scan seen by a detector ``left`` columns narrower on the left: the sample now touches
    the detector's edge (its centre of mass cannot be trusted), the axis moves by ``left``."""
    out = {k: (v[..., left:].copy() if k in ("proj", "darks", "flats") else v) for k, v in scan.items()}
    out["center"] = scan["center"] - left
    return out


def test_centre_is_checked_at_stop_and_a_wrong_guess_gives_a_second_corrected_final():
    scan = _cropped(phantom_scan(center=37.2), 6)  # axis 31.2 on 58 columns: 2.7 px off the middle
    updates = []
    # final_budget_s: every frame is summed even on a loaded machine (the comparison is exact)
    sink = PreviewSink([updates.append], publish_interval_s=10, final_budget_s=60)
    sink.open(spec_for(scan))
    feed(sink, scan)
    sink.close(ScanEnd("run-1"))
    final = sink.wait_final(30)
    first, second = [u for u in updates if u.final]
    assert first.metadata["refinement_pending"] is True  # (latency: the tests above, default budget)
    assert first.metadata["center_source"] == "detector middle"  # truncated: no centre of mass
    assert second is final and final.metadata["refinement_pending"] is False
    check = final.metadata["center_check"]
    assert check["recomputed"] == ["xy", "xz", "yz"] and abs(check["center"] - 31.2) < 0.5
    assert final.metadata["center"] == check["center"] and final.metadata["center_source"] == "0/180 pair"
    # all three slices at the checked centre (every projection fits the store here)
    ref = _engine_fbp(scan, check["center"])
    for plane, want in (("xz", ref[:, final.indices["xz"], :]), ("yz", ref[:, :, final.indices["yz"]])):
        np.testing.assert_allclose(final.slices[plane], want, atol=1e-4 * np.abs(ref).max())
        assert corr(first.slices[plane], want) < corr(final.slices[plane], want)
    xy = ref[final.indices["xy"]]
    m = disc(xy.shape[0], 0.7)
    assert corr(first.slices["xy"][m], xy[m]) < corr(final.slices["xy"][m], xy[m])
    assert corr(final.slices["xy"][m], xy[m]) > 0.95


def test_a_wrong_guess_moves_to_the_centre_of_mass_before_stop():
    scan = phantom_scan(center=43.7, n_det=88)  # sample inside the field; 0.2 px right of the middle
    scan = _cropped(scan, 8)  # 80 columns, axis 35.7: 3.2 px right of the middle, sample still inside
    updates = []
    sink = PreviewSink([updates.append], publish_interval_s=0.0, final_budget_s=60)  # every frame summed
    sink.open(spec_for(scan))
    feed(sink, scan)
    sink.close(ScanEnd("run-1"))
    final = sink.wait_final(30)
    moved = [u for u in updates if u.metadata["center_source"] == "centre of mass (during the scan)"]
    assert moved and moved[0].metadata["n_projections_used"] <= 70  # two thirds in, not at stop
    first = next(u for u in updates if u.final)
    assert abs(first.metadata["center"] - 35.7) < 0.5  # the first final is already at the right centre
    check = final.metadata["center_check"]
    assert check["done"] and abs(check["center"] - 35.7) < 0.5 and "moved_during_scan" in check
    ref = _engine_fbp(scan, 35.7)
    xy = ref[final.indices["xy"]]
    m = disc(xy.shape[0], 0.7)
    assert corr(final.slices["xy"][m], xy[m]) > 0.95
    for plane, want in (("xz", ref[:, final.indices["xz"], :]), ("yz", ref[:, :, final.indices["yz"]])):
        assert corr(final.slices[plane], want) > 0.95


def _engine_fbp(scan: dict, center: float) -> np.ndarray:
    """The engine's FBP of the scan's frames at ``center``: (nz, n, n)."""
    from bluesky_tomo_hpc.engine.fbp import reconstruct_fbp

    proj = scan["proj"].astype(np.float64)
    dark, flat = scan["darks"].mean(0), scan["flats"].mean(0)
    line = -np.log((proj - dark) / (flat - dark)).astype(np.float32)
    return reconstruct_fbp(line.transpose(1, 0, 2), scan["theta"], center)


def test_a_360_scan_moves_to_the_pair_centre_mid_scan_in_all_three_slices():
    scan = phantom_scan(center=35.2, n_angles=120, span=2 * np.pi)  # no hint: the middle is 3.7 px off
    updates = []
    sink = PreviewSink([updates.append], publish_interval_s=0.0, final_budget_s=60)  # every frame summed
    sink.open(spec_for(scan))
    feed(sink, scan)
    sink.close(ScanEnd("run-1"))
    final = sink.wait_final(30)
    live = [u for u in updates if not u.final]
    moved = [u for u in live if u.metadata["center_source"] == "0/180 pair (during the scan)"]
    assert live[0].metadata["center_source"] == "detector middle"
    assert moved and moved[0].metadata["n_projections_used"] <= 70  # half-way, not at stop
    assert abs(moved[0].metadata["center"] - 35.2) < 0.5
    check = final.metadata["center_check"]
    assert check["recomputed"] == [] and "moved_during_scan" in check  # already right at stop
    assert final.metadata["center"] == moved[-1].metadata["center"]
    ref = _engine_fbp(scan, final.metadata["center"])
    for plane, want in (("xz", ref[:, final.indices["xz"], :]), ("yz", ref[:, :, final.indices["yz"]])):
        np.testing.assert_allclose(final.slices[plane], want, atol=1e-4 * np.abs(ref).max())


def test_projection_store_thins_evenly_within_its_bytes():
    from bluesky_tomo_hpc.sinks.preview_recentre import ProjectionStore

    store = ProjectionStore(max_bytes=10 * 400)
    for k in range(100):
        store.add(float(k), np.full((10, 10), k, np.float32))  # 400 bytes each
    assert store.nbytes <= store.max_bytes and store.stride == 16
    kept = [t for t, _ in store.items]
    assert kept == [float(k) for k in range(0, 100, 16)]  # evenly spread over the whole scan
    assert ProjectionStore(0).items == []


def test_a_right_centre_is_confirmed_without_recomputing(scan):
    _, final, updates = run_preview(scan)
    check = final.metadata["center_check"]
    assert check["done"] and check["recomputed"] == [] and abs(check["center"] - 31.5) < 0.5
    first, second = [u for u in updates if u.final]
    assert first.metadata["refinement_pending"] and not second.metadata["refinement_pending"]
    np.testing.assert_array_equal(first.slices["xy"], second.slices["xy"])


def test_batched_gather_equals_the_per_frame_one():
    """The GPU's batched back-projection (run here on NumPy) and the CPU's threaded one add
    exactly what the per-frame one adds, for arbitrary filtered rows and angles."""
    scan_small = phantom_scan(n=48, nz=6, n_angles=4)
    sink = PreviewSink(device="cpu", positions=(0.3, 0.6, 0.4))
    spec = spec_for(scan_small)
    sink._spec = spec
    sink._setup(spec)
    rng = np.random.default_rng(3)
    q = rng.standard_normal((7, 6, sink._n_pad + 3)).astype(np.float32)
    thetas = rng.uniform(0, np.pi, 7)
    for qq, t in zip(q, thetas, strict=True):
        sink._backproject(qq, float(t))
    per_frame = [a.copy() for a in (sink.acc_xy, sink.acc_xz, sink.acc_yz)]
    for a in (sink.acc_xy, sink.acc_xz, sink.acc_yz):
        a[...] = 0
    sink._backproject_batch(q, thetas)
    for got, want in zip((sink.acc_xy, sink.acc_xz, sink.acc_yz), per_frame, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(per_frame[0]).max() > 0.1  # the check compares something
    # the CPU path on 2 and 3 threads (uneven row blocks) adds exactly the per-frame sums
    for threads in (2, 3):
        for a in (sink.acc_xy, sink.acc_xz, sink.acc_yz):
            a[...] = 0
        sink._backproject_cpu(q, thetas, threads=threads)
        for got, want in zip((sink.acc_xy, sink.acc_xz, sink.acc_yz), per_frame, strict=True):
            np.testing.assert_array_equal(got, want)


def test_unconfirmed_guess_is_marked_centre_uncertain_on_metadata_and_picture(tmp_path):
    """No hint and no 0/180 pair (90 degrees only): the detector middle is a guess, and the
    final says so in its metadata and on the picture's title."""
    from bluesky_tomo_hpc.sinks.preview_outputs import PreviewFileWriter

    scan = phantom_scan(n_angles=46)
    scan["theta"] = scan["theta"][:23]
    scan["proj"] = scan["proj"][:23]
    writer = PreviewFileWriter(tmp_path, live=False)
    sink = PreviewSink([writer], publish_interval_s=10)
    sink.open(spec_for(scan))
    feed(sink, scan)
    sink.close(ScanEnd("run-1"))
    final = sink.wait_final(30)
    assert final.metadata["center_check"]["done"] is False and final.metadata["center_uncertain"] is True
    assert any(p.name.endswith("_preview.png") for p in writer.written)


def test_confirmed_centre_is_not_uncertain(scan):
    _, final, _ = run_preview(scan)
    assert final.metadata["center_uncertain"] is False


def test_slices_moved_mid_scan_over_0mq_equal_a_preview_made_there(scan):
    """The web page's move, as the preview worker gets it (0MQ REQ/REP): the moved slices are
    rebuilt from the kept projections, so the final equals a preview placed there from the start;
    out-of-range, unknown-run, malformed and after-stop requests are refused in one line."""
    import zmq

    from bluesky_tomo_hpc.sinks.preview_control import ControlError, PreviewControlServer, request_move

    nz, n = scan["proj"].shape[1:]
    half = len(scan["theta"]) // 2
    moved = PreviewSink(publish_interval_s=0.0, center=scan["center"])

    def move(uid: str, wanted: dict) -> dict:
        if uid != "run-1":
            raise ValueError(f"run {uid} unknown")
        return moved.move_slices(wanted)

    server = PreviewControlServer("tcp://127.0.0.1:*", move)
    try:
        moved.open(spec_for(scan))
        first = {k: (v[:half] if k in ("proj", "theta") else v) for k, v in scan.items()}
        feed(moved, first)
        wanted = {"xy": 3, "xz": 10, "yz": 50}
        assert request_move(server.address, "run-1", wanted) == wanted
        with pytest.raises(ControlError, match=f"xy index must be from 0 to {nz - 1}"):
            request_move(server.address, "run-1", {"xy": nz})
        with pytest.raises(ControlError, match="run other unknown"):
            request_move(server.address, "other", {"xy": 1})
        with pytest.raises(ControlError, match="whole number"):
            request_move(server.address, "run-1", {"xz": -1})
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.connect(server.address)
        sock.send(b"\xff not json")
        assert sock.poll(30_000) and "UTF-8 JSON" in sock.recv_json()["error"]
        sock.close(linger=0)
        for i in range(half, len(scan["theta"])):
            moved.add(FrameBatch(FrameRole.PROJECTION, np.arange(i, i + 1), scan["proj"][i:i + 1],
                                 scan["theta"][i:i + 1], run_uid="run-1"))
        moved.close(ScanEnd("run-1"))
        final = moved.wait_final(timeout=60)
        with pytest.raises(ControlError, match="has stopped"):
            request_move(server.address, "run-1", {"xy": 1})
    finally:
        server.close()
    assert final.indices == wanted
    there = PreviewSink(publish_interval_s=0.0, center=scan["center"],
                        positions=(3 / (nz - 1), 10 / (n - 1), 50 / (n - 1)))
    there.open(spec_for(scan))
    feed(there, scan)
    there.close(ScanEnd("run-1"))
    ref = there.wait_final(timeout=60)
    assert ref.indices == wanted
    for plane in ("xz", "yz"):  # every projection was kept: the same sums
        np.testing.assert_allclose(final.slices[plane], ref.slices[plane], rtol=1e-3, atol=1e-5)
    m = disc(n)
    assert corr(final.slices["xy"][m], ref.slices["xy"][m]) > 0.98  # gridding vs gather: close
