"""Volumes on disk as users open them (ome-zarr reader, tifffile), written all-or-nothing."""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import uuid

import numpy as np
import pytest
import tifffile
from test_engine_recon_cli import _parse, dx_file, write_dxchange  # noqa: F401 - fixture reused
from test_engine_recon_pipeline import make_scan

from bluesky_tomo_hpc.batch.slab_pipeline import slab_bytes_per_row, slab_rows
from bluesky_tomo_hpc.cli import recon as recon_cli
from bluesky_tomo_hpc.cli.errors import EXIT_OUTPUT
from bluesky_tomo_hpc.cli.main import main as cli_main
from bluesky_tomo_hpc.engine.memory import MemoryBudgetError
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.results.provenance import PROVENANCE_SCHEMA, STAGES, CenterChoice, provenance_record
from bluesky_tomo_hpc.results.volume_files import (
    ResultExistsError,
    ResultLayout,
    VolumeWriteError,
    VolumeWriter,
    is_complete,
)


def _volume(nz: int = 8, n: int = 16) -> np.ndarray:
    return np.random.default_rng(1).random((nz, n, n)).astype(np.float32)


def _record(shape: tuple[int, ...]) -> dict:
    return provenance_record(
        params=ReconParams(center=7.5), center=CenterChoice(7.5, 1.0, "given"),
        source={"path": "/data/x.h5", "sha256": "0" * 64}, call="test()", timings_s={"reconstruct": 0.1},
        shape=shape, rows=(10, 10 + 2 * shape[0]), voxel_size_um=1.3,
    )


def _write(directory, vol, slab: int, **kw) -> ResultLayout:
    with VolumeWriter(directory, vol.shape, **kw) as w:
        for z in range(0, vol.shape[0], slab):
            w.write(z, vol[z : z + slab])
        return w.finish(_record(vol.shape))


@pytest.mark.parametrize("slab", [4, 3])  # aligned to the levels, and not (levels read back)
def test_formats_open_as_a_user_would(tmp_path, slab):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    vol = _volume()
    layout = _write(tmp_path / "res", vol, slab, first_row=10, row_step=2, voxel_size_um=1.3, chunk_z=4)
    assert is_complete(layout.directory) and not layout.partial.exists()

    node = next(n for n in Reader(parse_url(str(layout.zarr)))() if n.load(Multiscales))
    levels = [np.asarray(d) for d in node.data]
    np.testing.assert_array_equal(levels[0], vol)
    assert [a.shape for a in levels] == [(8, 16, 16), (4, 8, 8), (2, 4, 4)]
    np.testing.assert_allclose(levels[1][1], vol[2:4].reshape(2, 8, 2, 8, 2).mean(axis=(0, 2, 4)), rtol=1e-6)
    ms = node.metadata
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert {a.get("unit") for a in ms["axes"]} == {"micrometer"}
    scales = [t[0]["scale"] for t in ms["coordinateTransformations"]]
    assert scales[0] == pytest.approx([1.3] * 3) and scales[2] == pytest.approx([5.2] * 3)

    tiffs = sorted(layout.tiff_dir.glob("*.tiff"))
    assert [p.name for p in tiffs[:2]] == ["recon_00010.tiff", "recon_00012.tiff"] and len(tiffs) == 8
    with tifffile.TiffFile(tiffs[3]) as tf:
        page = tf.pages[0]
        np.testing.assert_array_equal(page.asarray(), vol[3])
        num, den = page.tags["XResolution"].value
        assert num / den == pytest.approx(1e4 / 1.3, rel=1e-4)  # pixels per centimetre
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert json.loads(page.description)["detector_row"] == 16

    prov = json.loads(layout.provenance.read_text())
    assert prov["schema"] == PROVENANCE_SCHEMA and set(STAGES) <= set(prov["timings_s"])
    assert prov["params_hash"] == ReconParams(center=7.5).params_hash and prov["center"]["method"] == "given"


@pytest.mark.parametrize(("z0", "k"), [(0, 5), (1, 4), (2, 2), (0, 3)])
def test_chunks_written_as_files_read_back_as_zarr_writes_them(tmp_path, z0, k):
    """The chunk files written directly (edge chunks padded, partial ones through Zarr) hold what
    Zarr's own write gives: the bytes-only chunk layout this shortcut relies on."""
    import zarr

    from bluesky_tomo_hpc.results.volume_files import _raw_chunk_files, _store_slab

    group = zarr.open_group(str(tmp_path / "v.zarr"), mode="w")
    ours, theirs = (group.create_array(name, shape=(5, 7, 6), dtype="float32", chunks=(2, 4, 4),
                                       fill_value=np.nan, compressors=None) for name in ("ours", "theirs"))
    assert _raw_chunk_files(ours) is not None
    slab = _volume(k, 7)[:, :, :6]
    _store_slab(ours, z0, slab)
    theirs[z0 : z0 + k] = slab
    reread = zarr.open_group(str(tmp_path / "v.zarr"), mode="r")
    np.testing.assert_array_equal(reread["ours"][:], reread["theirs"][:])
    assert np.isnan(reread["ours"][:z0]).all() and np.array_equal(reread["ours"][z0 : z0 + k], slab)


def test_existing_result_refused_and_overwrite_leaves_nothing_stale(tmp_path):
    out = tmp_path / "res"
    _write(out, _volume(8), 4)
    with pytest.raises(ResultExistsError, match="already holds a result"):
        VolumeWriter(out, (4, 16, 16))
    assert len(list(ResultLayout(out).tiff_dir.glob("*.tiff"))) == 8  # untouched
    _write(out, _volume(4), 4, overwrite=True)
    assert len(list(ResultLayout(out).tiff_dir.glob("*.tiff"))) == 4, "no stale TIFFs of the old result"
    assert json.loads(ResultLayout(out).provenance.read_text())["shape"] == [4, 16, 16]


def test_failed_write_never_looks_complete_and_says_why(tmp_path):
    out = tmp_path / "res"
    with pytest.raises(VolumeWriteError, match="boom"):
        with VolumeWriter(out, (8, 16, 16)) as w:
            w.write(0, _volume(4))
            raise RuntimeError("boom")
    layout = ResultLayout(out)
    assert not out.exists() and not is_complete(out)
    note = layout.failure_note.read_text()
    assert "RuntimeError: boom" in note and "4 of 8 slices" in note
    # a later attempt starts clean over the failed one
    _write(out, _volume(8), 8)
    assert is_complete(out) and not layout.partial.exists()


def test_interrupted_write_says_so(tmp_path):
    out = tmp_path / "res"
    with pytest.raises(KeyboardInterrupt):
        with VolumeWriter(out, (8, 16, 16)) as w:
            w.write(0, _volume(4))
            raise KeyboardInterrupt
    assert not out.exists() and "interrupted" in ResultLayout(out).failure_note.read_text()


def test_injected_full_disk(tmp_path, monkeypatch):
    """ENOSPC in the middle of the TIFFs: the partial data is freed, the note says the disk is full."""
    calls = {"n": 0}
    real = tifffile.imwrite

    def full_after_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", full_after_three)
    out = tmp_path / "res"
    with pytest.raises(VolumeWriteError, match="disk is full") as err:
        _write(out, _volume(8), 4)
    assert err.value.errno == errno.ENOSPC
    layout = ResultLayout(out)
    assert not out.exists() and "ENOSPC" in layout.failure_note.read_text()
    assert not layout.zarr.exists() and not (layout.partial / "tiff").exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (the volume needs about 0.6 MB) (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / f"full-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_recon_onto_a_full_disk(dx_file, small_tmpfs, capsys):  # noqa: F811
    before = hashlib.sha256(dx_file.read_bytes()).hexdigest()
    out = small_tmpfs / "rec"
    code = cli_main(["recon", str(dx_file), "--out", str(out), "--center", "40"])
    err = capsys.readouterr().err
    assert code == EXIT_OUTPUT and "No space left on device" in err and "FAILED.txt" in err
    assert not out.exists() and "ENOSPC" in ResultLayout(out).failure_note.read_text()
    assert hashlib.sha256(dx_file.read_bytes()).hexdigest() == before, "raw data untouched"


def test_recon_refuses_existing_result_unless_overwrite(dx_file, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "rec"
    assert cli_main(["recon", str(dx_file), "--out", str(out), "--center", "40"]) == 0
    assert len(list((out / "tiff").glob("*.tiff"))) == 10
    assert cli_main(["recon", str(dx_file), "--out", str(out), "--rows", "0:4"]) == 2
    assert "already holds a result" in capsys.readouterr().err
    assert cli_main(["recon", str(dx_file), "--out", str(out), "--rows", "0:4",
                     "--center", "40", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "tiff").glob("*.tiff")) == [f"recon_{r:05d}.tiff" for r in range(4)]


def test_memory_budget_below_one_slab_is_refused_naming_the_minimum(dx_file, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "rec"
    assert cli_main(["recon", str(dx_file), "--out", str(out), "--center", "40",
                     "--memory-budget-mb", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "too small for one slab" in err and "at least" in err and "MiB" in err
    assert not out.exists() and not ResultLayout(out).partial.exists()
    per_row, fixed = slab_bytes_per_row(720, 64, 1)
    need = (per_row + fixed) / 2**20
    with pytest.raises(MemoryBudgetError, match=f"at least {need:.0f} MiB"):
        slab_rows(int((per_row + fixed) * 0.9), 720, 64, 1)
    assert slab_rows(per_row + fixed, 720, 64, 1) == 1


def test_slab_rows_follow_the_budget():
    per_mb = [slab_rows(mb * 2**20, 720, 1024, 1, chunk_slices=8, cap_slices=None)
              for mb in (512, 1024, 4096)]  # 256 MiB: the engine's plan (2 workers) + 1 row
    assert per_mb[0] < per_mb[1] < per_mb[2] and per_mb[1] % 8 == 0
    assert slab_rows(2**40, 720, 1024, 2, chunk_slices=8) == 32  # the cap: 16 slices of binning 2


def test_pixel_size_from_the_scan_file_and_binning(tmp_path):
    import zarr

    path = write_dxchange(tmp_path / "px.h5", make_scan(n_det=32, ny=4, n_angles=60, center=15.5), **{
        "/measurement/instrument/detection_system/objective/resolution": 0.65})
    out = tmp_path / "rec"
    assert recon_cli.run(_parse(["recon", str(path), "--out", str(out), "--binning", "2", "--center",
                                 "15.5"])) == 0
    attrs = zarr.open_group(out / "volume.ome.zarr", mode="r").attrs.asdict()
    ms = (attrs.get("ome") or attrs)["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx([1.3] * 3)
    assert json.loads((out / "provenance.json").read_text())["voxel_size_um"] == pytest.approx(1.3)


def test_ranks_on_a_node_share_its_budget():
    from bluesky_tomo_hpc.batch.batch_program import rank_budget_bytes
    from bluesky_tomo_hpc.batch.job import Resources

    assert rank_budget_bytes(Resources(ranks=4, memory_budget_mb=400), 4) == 100 * 2**20
    assert rank_budget_bytes(Resources(ranks=4, nodes=2, memory_budget_mb=400), 4) == 200 * 2**20
    assert rank_budget_bytes(Resources(ranks=4, memory_budget_mb=400), 1) == 400 * 2**20  # recon FILE


_RSS_CHILD = """
import argparse, gc, json, sys
import bluesky_tomo_hpc.batch.batch_program, ome_zarr.writer, tifffile, zarr  # imports before the baseline
from bluesky_tomo_hpc.cli import recon as recon_cli
parser = argparse.ArgumentParser()
recon_cli.register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
def peak():  # VmHWM, not ru_maxrss: that one also counts the parent's peak at the spawn
    return next(int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith("VmHWM:"))
gc.collect()
base = peak()
code = recon_cli.run(args)
print(json.dumps({"code": code, "above": peak() - base}))
"""


@pytest.mark.slow
def test_recon_stays_within_its_memory_budget(tmp_path):
    """A volume (302 MB) larger than the budget (256 MiB, the fixed overhead included): the peak
    resident memory (VmHWM) above an idle interpreter with the same imports stays under it."""
    import sys

    from test_engine_recon_cli import write_dxchange

    path = write_dxchange(tmp_path / "big.h5", make_scan(n_obj=700, n_det=768, ny=128, n_angles=180,
                                                         center=383.5))
    out = tmp_path / "rec"
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, "recon", str(path), "--out", str(out),
                           "--center", "383.5", "--memory-budget-mb", "256", "--slab-rows", "4096"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    slab = json.loads((out / "provenance.json").read_text())["extra"]["slab_rows"]
    assert report["code"] == 0 and 1 <= slab < 128
    assert report["above"] <= 256 * 2**20, f"{report['above'] / 2**20:.0f} MiB above the baseline"
