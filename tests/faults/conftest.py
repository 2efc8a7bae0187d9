"""Fixtures and the table hook of the fault suite (the shared checks are in ``fault_world.py``).

Every case gets a :class:`~fault_world.FaultWorld` (fixture ``world``): a data folder, a working
directory and a sentinel path, all under the case's own ``tmp_path``. After each case the fixture
asserts the two rules every case shares: no sentinel command ran, and nothing was written
outside the data folder. Each case's docstring starts with one line saying what is expected;
``faults_table.py`` (next to this file) runs the suite and renders ``docs/reference/faults.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from fault_world import FaultWorld, absolute_target, hostile_strings

#: set by faults_table.py: where to write one JSON record per case
REPORT_ENV = "TOMO_FAULTS_REPORT"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterable[FaultWorld]:
    w = FaultWorld(root=tmp_path, data=tmp_path / "data", cwd=tmp_path / "cwd",
                   sentinel=tmp_path / "SENTINEL")
    w.data.mkdir()
    w.cwd.mkdir()
    monkeypatch.chdir(w.cwd)
    for name in [k for k in os.environ if k.startswith("BLUESKY_TOMO_HPC")]:
        monkeypatch.delenv(name)
    yield w
    assert not w.sentinel.exists(), "a command from a hostile string was executed"
    assert not absolute_target(w.sentinel).exists(), "an absolute name was used as a path"
    assert w.outside_writes() == [], "written outside the data folder"


@pytest.fixture
def hostile(world: FaultWorld) -> dict[str, str]:
    return hostile_strings(world.sentinel)


# -- the table: one JSON line per case when $TOMO_FAULTS_REPORT names a file -------------------
def _expected(item: pytest.Item) -> str:
    doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get(REPORT_ENV)
    if not path or not (report.when == "call" or report.outcome != "passed"):
        return
    record = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
              "seconds": round(report.duration, 3), "expected": getattr(report, "expected_line", "")}
    if report.outcome != "passed":
        record["detail"] = str(report.longrepr).strip().splitlines()[-1][:200] if report.longrepr else ""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    outcome.get_result().expected_line = _expected(item)
