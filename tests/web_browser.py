"""Headless Debian chromium driven by playwright's Python API, for the web page's tests.

Playwright's own browser download is not used (nothing is fetched at run time): it drives the
system's ``/usr/bin/chromium`` (Debian's ``chromium`` package, installed by ``.ci/run``). Outside
CI a machine without it skips these tests with the reason; in CI its absence is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = os.environ.get("BLUESKY_TOMO_HPC_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-unsafe-swiftshader"]


def chromium_or_skip() -> str:
    if shutil.which(CHROMIUM) or os.path.exists(CHROMIUM):
        return CHROMIUM
    reason = f"{CHROMIUM} not found (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: .ci/run installs it, so CI must have it")
    pytest.skip(reason)


@contextmanager
def browser() -> Iterator[Any]:
    """A playwright Browser on the system chromium with a fresh profile folder."""
    path = chromium_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (test extra)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=path, headless=True, args=FLAGS, viewport={"width": 1280, "height": 900})
        try:
            yield ctx
        finally:
            ctx.close()
