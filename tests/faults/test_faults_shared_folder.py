"""Several processes on one data folder: whoever claims a result makes it (``<result>.lock``, see
``results/result_claim.py``); another process skips it with an info line and exits 0, never
touching the maker's ``.partial`` folder. A maker killed by SIGKILL drops its claim with its
life: the next run replaces the stale ``.partial`` and records the loss in the provenance.

Two real processes: a maker holding the claim (killed by a real SIGKILL) and ``recon`` run here;
each step waits on what the maker printed or on its exit, never on a timer."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_engine_recon_cli import _parse  # tests/ is on sys.path (prepend import mode)

from bluesky_tomo_hpc.cli import recon as recon_cli
from bluesky_tomo_hpc.results.result_claim import ResultClaim, ResultClaimedError, lock_path
from bluesky_tomo_hpc.results.volume_files import ResultLayout, is_complete

#: another maker: claims the result, starts its .partial folder, says so, then works "forever"
MAKER = """
import sys
from pathlib import Path
from bluesky_tomo_hpc.results.result_claim import ResultClaim
result = Path(sys.argv[1])
claim = ResultClaim.take(result)
(result.parent / (result.name + ".partial")).mkdir()
(result.parent / (result.name + ".partial") / "slices-in-progress").write_text("mine")
print("claimed", flush=True)
sys.stdin.read()
"""


def recon(scan: Path, out: Path) -> int:
    """``bluesky-tomo-hpc recon`` in this process (a process other than the maker's)."""
    return recon_cli.run(_parse(["recon", str(scan), "--out", str(out), "--center", "320", "--no-tiff"]))


@pytest.fixture
def scan(world, reference_file) -> Path:
    return reference_file("tomopy_tooth/tooth.h5")


def test_second_maker_skips_and_a_killed_makers_partial_is_replaced_and_recorded(world, scan, capsys):
    """Claimed by a live process: skipped, exit 0, its .partial kept; after SIGKILL: remade, loss recorded."""
    out = world.data / "tooth_rec"
    layout = ResultLayout(out)
    maker = subprocess.Popen([sys.executable, "-c", MAKER, str(out)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert maker.stdout.readline().strip() == "claimed"
        assert recon(scan, out) == 0
        assert "made by another process" in capsys.readouterr().out
        assert (layout.partial / "slices-in-progress").read_text() == "mine"  # the maker's work kept
        assert not out.exists()
        with pytest.raises(ResultClaimedError, match="being made by another process"):
            ResultClaim.take(out)
    finally:
        maker.send_signal(signal.SIGKILL)
        maker.wait(60)
    assert maker.returncode == -signal.SIGKILL
    assert recon(scan, out) == 0  # the claim died with its process: the stale .partial is replaced
    assert is_complete(out) and not layout.partial.exists() and not lock_path(out).exists()
    earlier = json.loads(layout.provenance.read_text())["earlier_attempt"]
    assert earlier["path"] == str(layout.partial) and "interrupted" in earlier["how"]
    assert earlier["failure_note"] is None
