"""Run a RunEngine callback on its own thread, in order, so the RunEngine never waits for it.

A callback runs inside the RunEngine's loop, and an exception in one aborts the scan. So
:class:`ThreadedCallback` only enqueues the document and returns; a daemon thread calls the
target, logs and keeps (never raises) its errors. Like bluesky's ``make_callback_safe`` it never
raises into the RunEngine, and like ``BufferingWrapper`` it decouples the work. Two policies,
one class:

* raw data (the ``TiledWriter``): nothing may be dropped, so the queue is unbounded;
* live processing (the tomography router): the queue is bounded; when a slow sink lets it fill,
  *frame* documents (the ``droppable`` names) wait ``put_timeout`` and are then dropped and
  reported through ``on_drop``, while the documents that structure a run (start, descriptor,
  resources, stop) are always accepted, so every run still ends cleanly.

``flush()`` waits until the target has caught up; ``close()`` drains the queue and ends the
thread (also at interpreter exit).
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

log = logging.getLogger(__name__)

#: the documents that carry frames (and may be dropped by a bounded queue)
FRAME_DOCUMENTS = frozenset({"event", "event_page", "datum", "datum_page", "stream_datum"})


class ThreadedCallback:
    """``RE.subscribe(ThreadedCallback(cb))``: enqueue and return; a daemon thread calls ``cb``."""

    def __init__(
        self,
        target: Callable[[str, dict[str, Any]], Any],
        *,
        name: str | None = None,
        max_queue: int | None = None,
        droppable: Collection[str] = FRAME_DOCUMENTS,
        put_timeout: float = 1.0,
        on_drop: Callable[[str, dict[str, Any]], None] | None = None,
    ):
        self.target = target
        self.max_queue = max_queue
        self.droppable = frozenset(droppable)
        self.put_timeout = put_timeout
        self.on_drop = on_drop
        self.dropped = 0
        self._errors: list[tuple[str, str]] = []
        self._queue: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._work, daemon=True,
                                        name=name or f"threaded-{type(target).__name__}")
        self._thread.start()
        atexit.register(self.close, 30.0)

    # -- RunEngine side -----------------------------------------------------------------------
    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            with self._cond:
                if self._stopping:
                    return
                if not self._room_for(name):
                    self.dropped += 1
                    if self.on_drop is not None:
                        self.on_drop(name, doc)
                    return
                self._queue.append((name, doc))
                self._cond.notify_all()
        except Exception:  # never into the RunEngine
            log.exception("%s could not enqueue a %r document", type(self.target).__name__, name)

    def _room_for(self, name: str) -> bool:
        """Wait (bounded) for room for a droppable document; structural ones always fit."""
        if self.max_queue is None or name not in self.droppable:
            return True
        deadline = time.monotonic() + self.put_timeout
        while len(self._queue) >= self.max_queue and not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._cond.wait(left)
        return True

    # -- worker side --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue and self._stopping:
                    return
                name, doc = self._queue.popleft()
                self._busy = True
                self._cond.notify_all()
            try:
                self.target(name, doc)
            except Exception as exc:  # logged and kept; never raised into the RunEngine
                log.exception("%s failed on a %r document", type(self.target).__name__, name)
                self._errors.append((name, f"{type(exc).__name__}: {exc}"))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    @property
    def errors(self) -> list[tuple[str, str]]:
        """(document name, message) of every failure of the target, oldest first."""
        return self._errors

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every document enqueued so far was handled; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float | None = 30.0) -> bool:
        """Handle what is queued, then end the thread; False if it did not end in time."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued(self) -> int:
        """Documents waiting for the target (a soak run checks this never grows without bound)."""
        return len(self._queue)
