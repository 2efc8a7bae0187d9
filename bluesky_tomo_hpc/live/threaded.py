"""Run a RunEngine callback on its own thread, in order, so the RunEngine never waits for it.

Used for the raw-data ``TiledWriter``: with ``batch_size=1`` it makes an HTTP round trip per
document, which would otherwise stretch a 6 s simulated scan to more than a minute. Nothing is
dropped (the queue is unbounded; raw data must all arrive); ``flush()`` waits until the writer
has caught up, and an exit handler flushes what is left when the interpreter ends.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class ThreadedCallback:
    """``RE.subscribe(ThreadedCallback(cb))``: enqueue and return; a daemon thread calls ``cb``."""

    def __init__(self, target: Callable[[str, dict[str, Any]], Any], name: str | None = None):
        self.target = target
        self.errors: list[tuple[str, str]] = []
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, daemon=True,
                                        name=name or f"threaded-{type(target).__name__}")
        self._thread.start()
        atexit.register(self.close, 30.0)

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self._queue.put((name, doc))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.target(*item)
            except Exception as exc:  # logged and kept; never raised into the RunEngine
                log.exception("%s failed on a %r document", type(self.target).__name__, item[0])
                self.errors.append((item[0], f"{type(exc).__name__}: {exc}"))
            finally:
                self._queue.task_done()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every document enqueued so far was handled; False on timeout."""
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True)
        waiter.start()
        return done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
