"""What every fault case shares: its folders and sentinel, hostile strings, the common checks.

Hostile strings carry shell commands that would create the case's sentinel file, and ``../``
or absolute paths that would leave the data folder. The checks every case must pass:

* no sentinel command ran, nothing written outside the data folder (asserted by the ``world``
  fixture after each case, see conftest.py);
* no scan aborted by us (:func:`assert_scan_not_aborted`), no raw data lost
  (:func:`assert_raw_intact`), every derived result stored or recorded as failed with a reason
  (:func:`assert_stored_or_failed_with_reason`), called by the cases where they apply.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FaultWorld:
    """A case's folders and sentinel (see the module docstring)."""

    root: Path
    data: Path
    cwd: Path
    sentinel: Path
    inputs: set[str] = field(default_factory=set)

    def input(self, name: str) -> Path:
        """A path under the case's root for a file the case itself provides (allowed outside data)."""
        self.inputs.add(name.split("/", 1)[0])
        return self.root / name

    def outside_writes(self) -> list[str]:
        allowed = {"data", "cwd", *self.inputs}
        stray = sorted(p.name for p in self.root.iterdir() if p.name not in allowed)
        stray += sorted(f"cwd/{p.name}" for p in self.cwd.iterdir())
        return stray


def absolute_target(sentinel: Path) -> Path:
    """Where an absolute hostile name points: beside the case's folder, unique to the case."""
    return sentinel.parent.parent / f"{sentinel.parent.name}-ABSOLUTE"


def hostile_strings(sentinel: Path) -> dict[str, str]:
    """Strings an attacker or an unlucky user might put where a name is expected."""
    s = str(sentinel)
    return {
        "dotdot": "../../../../escape",
        "absolute": str(absolute_target(sentinel)),
        "subshell": f"x$(touch {s})",
        "backticks": f"x`touch {s}`",
        "semicolon": f"x; touch {s}",
        "newline": f"x\ntouch {s}",
        "quotes": f"x' \"; touch {s}; '",
        "dash": "--help",
        "unicode": "échantillon-日本-\u202e-🦀",
        "nul": "x\x00y",
        "10kB": "a" * 10_240,
    }


HOSTILE_IDS = list(hostile_strings(Path("/s")))


def assert_scan_not_aborted(stop_docs: Iterable[Mapping[str, Any]]) -> None:
    """Every scan ended as its plan ended it: none was aborted or failed by this project."""
    stops = list(stop_docs)
    assert stops, "no scan ran"
    assert [d.get("exit_status") for d in stops] == ["success"] * len(stops), stops


def assert_raw_intact(files: Iterable[str | Path], frames: int | None = None) -> None:
    """Raw HDF5 files are still there and readable (and hold ``frames`` frames when given)."""
    import h5py

    files = list(files)
    assert files, "no raw file recorded"
    total = 0
    for f in files:
        with h5py.File(f, "r", locking=False) as h:
            sizes: list[int] = []
            h.visititems(lambda _n, o, s=sizes: s.append(o.shape[0])
                         if isinstance(o, h5py.Dataset) and o.ndim == 3 else None)
            total += sum(sizes)
    if frames is not None:
        assert total >= frames, f"raw files hold {total} frames, expected {frames}"


def assert_stored_or_failed_with_reason(outcomes: Mapping[str, Any]) -> None:
    """Every derived result was stored, or recorded as failed with a reason a person can read."""
    assert outcomes, "no outcome recorded"
    for uid, o in outcomes.items():
        ok = getattr(o, "ok", None)
        message = getattr(o, "message", "")
        assert ok or (isinstance(message, str) and len(message) > 10), (uid, o)
