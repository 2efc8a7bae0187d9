"""Hostile and malformed NTNDArray frames (real pvapy objects) into the PV Access source and worker."""

from __future__ import annotations

import numpy as np
import pytest

pva = pytest.importorskip("pvaccess")

from fault_world import assert_stored_or_failed_with_reason  # noqa: E402
from test_pva_source import ntnd  # noqa: E402  (tests/ is on sys.path: its conftest.py)

from bluesky_tomo_hpc.sources.pva import PvaSource  # noqa: E402

SHAPE = (16, 32)


def _frames(scan_uid: str, n_proj: int = 12) -> list:
    rng = np.random.default_rng(1)
    out, uid = [], 0
    for kind, level, n in (("dark", 100, 2), ("flat", 1000, 2), ("projection", 600, n_proj)):
        for i in range(n):
            uid += 1
            img = (level + 20 * rng.random(SHAPE)).astype(np.uint16)
            attrs = {"frame_type": kind, "scan_uid": scan_uid}
            if kind == "projection":
                attrs["rotation_angle"] = 180.0 * i / n_proj
            out.append(ntnd(uid, img, **attrs))
    return out


def _worker(world):
    from bluesky_tomo_hpc.live.stream_worker import StreamWorker
    from bluesky_tomo_hpc.settings import Settings

    return StreamWorker(Settings.model_validate({
        "data_dir": str(world.data), "full_volume": True, "recon": {"circular_mask": None, "center": 15.5},
        "preview": {"png_dir": str(world.data / "previews"), "refine_center": False}}), client=None)


@pytest.mark.timeout(60)
def test_hostile_scan_uid_attribute(world, hostile):
    """A hostile scan uid in the frames' attributes: previewed and reconstructed, files only in png_dir."""
    scan_uid = "../" + hostile["subshell"] + hostile["newline"]
    from bluesky_tomo_hpc.live.stream_worker import _PerScanSinks

    worker = _worker(world)
    try:
        src = PvaSource(_PerScanSinks(worker.make_sinks), "x", n_projections=12, idle_timeout_s=None)
        for frame in _frames(scan_uid):
            src.on_frame(frame)
        assert worker.wait(60)
    finally:
        worker.close()
    assert src.errors == []
    assert_stored_or_failed_with_reason(worker.service.outcomes)
    assert list(worker.service.outcomes) == [scan_uid]
    names = [p.name for p in (world.data / "previews").iterdir()]
    assert any(n.endswith("_preview.png") for n in names) and all(n.isascii() for n in names)


def _bad_frames() -> dict[str, object]:
    img = np.ones(SHAPE, np.uint16)
    three_d = ntnd(90, img, frame_type="projection", rotation_angle=1.0)
    three_d["dimension"] = [pva.PvDimension(n, 0, n, 1, False) for n in (32, 8, 2)]
    wrong_size = ntnd(91, img, frame_type="projection", rotation_angle=1.0)
    wrong_size["dimension"] = [pva.PvDimension(n, 0, n, 1, False) for n in (1000, 1000)]
    not_image = ntnd(92, img, frame_type="projection", rotation_angle=1.0)
    not_image["value"] = {"booleanValue": [True] * 512}
    return {
        "three dimensions": three_d,
        "dimensions larger than the data": wrong_size,
        "value that is not an image type": not_image,
        "unknown frame kind": ntnd(93, img, frame_type="$(reboot)", rotation_angle=1.0),
        "angle that is text": ntnd(94, img, frame_type="projection", rotation_angle="ninety"),
        "angle that is NaN": ntnd(95, img, frame_type="projection", rotation_angle=float("nan")),
        "other frame size": ntnd(96, np.ones((8, 8), np.uint16), frame_type="projection",
                                 rotation_angle=1.0),
    }


@pytest.mark.parametrize("which", list(_bad_frames()))
def test_malformed_frame_is_counted_and_the_scan_goes_on(world, which):
    """A malformed NTNDArray frame is refused with a reason and counted; later good frames still arrive."""
    from test_pva_source import Recorder

    rec = Recorder()
    src = PvaSource(rec, "x", n_projections=3, idle_timeout_s=None)
    img = np.ones(SHAPE, np.uint16)
    src.on_frame(ntnd(1, img, frame_type="projection", rotation_angle=0.0, scan_uid="A"))
    src.on_frame(_bad_frames()[which])
    src.on_frame(ntnd(97, img, frame_type="projection", rotation_angle=60.0, scan_uid="A"))
    src.on_frame(ntnd(98, img, frame_type="projection", rotation_angle=120.0, scan_uid="A"))
    assert len(src.errors) == 1 and len(src.errors[0]) > 10, src.errors
    assert [c for c, _ in rec.calls].count("add") == 3
    (end,) = rec.of("close")
    assert end.exit_status == "success"
