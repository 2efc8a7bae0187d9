"""Shared fixtures: a fresh RunEngine per test, real Tiled servers, paths to the reference data."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

# Loopback only for EPICS PV Access, whatever the developer's environment says.
os.environ.setdefault("EPICS_PVA_AUTO_ADDR_LIST", "NO")
os.environ.setdefault("EPICS_PVA_ADDR_LIST", "127.0.0.1")
os.environ.setdefault("EPICS_CA_AUTO_ADDR_LIST", "NO")
os.environ.setdefault("EPICS_CA_ADDR_LIST", "127.0.0.1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()


TEST_DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def reference_file():
    """``rel`` (a path inside ``../shared/data``) from ``tests/data`` when it ships with the
    tests (small, permissively licensed: see tests/data/README.md), else from ``../shared/data``;
    the test skips when neither has it."""

    def find(rel: str) -> Path:
        for base in (TEST_DATA, SHARED_DATA):
            if (base / rel).is_file():
                return base / rel
        pytest.skip(f"{rel} is neither in {TEST_DATA} nor in {SHARED_DATA}")

    return find


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the checkout (reference data, never copied in)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


def _run_engine():
    """A RunEngine on its own fresh event loop, halted and closed when the generator ends."""
    from bluesky import RunEngine

    loop = asyncio.new_event_loop()
    engine = RunEngine({}, loop=loop)
    yield engine
    if engine.state not in ("idle", "panicked"):
        engine.halt()
    loop.call_soon_threadsafe(loop.stop)
    engine._th.join()
    loop.close()


@pytest.fixture
def RE():
    """A RunEngine on its own fresh event loop, halted and closed after the test."""
    yield from _run_engine()


@pytest.fixture(scope="module")
def module_RE():
    """One RunEngine for all the tests of a module (making one costs about a second)."""
    yield from _run_engine()


@pytest.fixture(scope="module")
def module_tiled_server(tmp_path_factory):
    """One embedded Tiled server for a whole test module (starting one costs seconds under load);
    ``.root`` is a folder it may read (give each test its own folder below it)."""
    from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer

    root = tmp_path_factory.mktemp("module-tiled")
    with EmbeddedTiledServer(root / "tiled", readable_storage=[root]) as srv:
        srv.root = root
        yield srv


@pytest.fixture
def tiled_server(tmp_path):
    """A real embedded Tiled server (SQLite + files + DuckDB) on 127.0.0.1 that may read tmp_path."""
    from tiled.server import SimpleTiledServer

    with SimpleTiledServer(tmp_path / "tiled", readable_storage=[tmp_path]) as server:
        yield server


@pytest.fixture
def tiled_client(tiled_server):
    from tiled.client import from_uri

    return from_uri(tiled_server.uri)


@pytest.fixture(params=["numpy", "cupy"])
def array_backend(request):
    """``ReconParams.device`` for each array backend: "cpu" (NumPy), "gpu" (CuPy; skipped where
    CuPy sees no GPU, e.g. in CI). Tests taking it run the same checks on both."""
    if request.param == "cupy":
        from bluesky_tomo_hpc.engine.backend import gpu_devices

        if not gpu_devices():
            pytest.skip("CuPy with a CUDA device is not available here")
        return "gpu"
    return "cpu"

