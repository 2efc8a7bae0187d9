"""Services the fault cases kill and restart: a Tiled server in its own process (SIGKILL-able,
restarted on the same port and folder) and a journal held locked by another connection."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

SERVER = """
import sys
from bluesky_tomo_hpc.results.tiled_server import serve_forever
serve_forever(sys.argv[1], api_key=sys.argv[2], port=int(sys.argv[3]), readable_storage=[sys.argv[4]])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TiledProcess:
    """This project's Tiled server as a separate process over ``directory``: ``kill()`` is a crash
    (SIGKILL), ``start()`` brings it back on the same port with the same data."""

    def __init__(self, directory: Path, readable: Path, api_key: str = "faultkey0123"):
        self.directory, self.readable, self.api_key = directory, readable, api_key
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}/api/v1"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> TiledProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(self.directory), self.api_key, str(self.port),
             str(self.readable)],
            stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False) as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                        return self
                if self.proc.poll() is not None:
                    tail = (self.directory / "server.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the Tiled server process exited at start:\n{tail}")
                time.sleep(0.1)
        raise TimeoutError("Tiled did not come up")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def client(self):
        from tiled.client import from_uri

        return from_uri(self.uri, api_key=self.api_key)


@contextlib.contextmanager
def journal_locked(path: Path, seconds: float | None = None) -> Iterator[sqlite3.Connection]:
    """Hold an exclusive lock on a journal (as a stuck ``sqlite3`` shell would) inside the block,
    or for ``seconds`` on a thread if given (then the block returns at once)."""
    db = sqlite3.connect(path, timeout=1, isolation_level=None, check_same_thread=False)
    db.execute("BEGIN EXCLUSIVE")

    def release() -> None:
        db.execute("ROLLBACK")
        db.close()

    if seconds is None:
        try:
            yield db
        finally:
            release()
    else:
        threading.Timer(seconds, release).start()
        yield db
