"""The object a beamline subscribes to its RunEngine: ``RE.subscribe(TomoCallback(...))``.

RunEngine callbacks run inside the RunEngine's loop, and an exception in one aborts the scan.
So this wrapper only enqueues the document and returns; a daemon thread feeds the synchronous
``TomoRunRouter``. Like bluesky's ``make_callback_safe`` it never raises into the RunEngine,
and like ``BufferingWrapper`` it decouples the work; unlike the latter its queue is bounded:
when a slow sink lets it fill, *frame* documents (events, datums, stream datums) wait briefly
and are then dropped and reported, while the documents that structure a run (start,
descriptor, resources, stop) are always accepted, so every run still ends cleanly.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..sinks.base import Sink
from .darkflat import DarkFlatResolver
from .documents import TomoRunRouter
from .recognise import Preset

log = logging.getLogger(__name__)

__all__ = ["TomoCallback"]

_DROPPABLE = frozenset({"event", "event_page", "datum", "datum_page", "stream_datum"})


class TomoCallback:
    """Thread-backed, never-raising RunEngine callback around :class:`TomoRunRouter`."""

    def __init__(self, sink_factory: Callable[[], Sink], *,
                 dark_flat_resolver: DarkFlatResolver | None = None,
                 presets: Mapping[str, Preset] | Sequence[Preset] | None = None,
                 queue_size: int = 10_000, put_timeout: float = 1.0,
                 router: TomoRunRouter | None = None, **router_kwargs: Any):
        self.router = router or TomoRunRouter(sink_factory, dark_flat_resolver=dark_flat_resolver,
                                              presets=presets, **router_kwargs)
        self.queue_size = queue_size
        self.put_timeout = put_timeout
        self._queue: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._work, name="TomoCallback", daemon=True)
        self._thread.start()

    @property
    def errors(self) -> list[tuple[str, str]]:
        """(run uid, message) of everything that went wrong, oldest first."""
        return self.router.errors

    def errors_for(self, run_uid: str) -> list[str]:
        return self.router.errors_for(run_uid)

    # -- RunEngine side -----------------------------------------------------------------------
    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            with self._cond:
                if self._stopping:
                    return
                if name in _DROPPABLE and len(self._queue) >= self.queue_size:
                    deadline = time.monotonic() + self.put_timeout
                    while len(self._queue) >= self.queue_size and not self._stopping:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            self.dropped += 1
                            run = doc.get("run_start") or doc.get("descriptor") or "?"
                            self.router._report(
                                str(run), f"queue full ({self.queue_size}): {name} document "
                                "dropped, its frames are lost for live processing")
                            return
                        self._cond.wait(left)
                self._queue.append((name, doc))
                self._cond.notify_all()
        except Exception:  # never into the RunEngine
            log.exception("TomoCallback could not enqueue a %r document", name)

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
                self.router(name, doc)  # never raises, but be certain the thread survives
            except Exception:
                log.exception("TomoRunRouter raised on a %r document", name)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every document enqueued so far is processed; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Process what is queued, then end the worker thread; False if it did not end in time."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
