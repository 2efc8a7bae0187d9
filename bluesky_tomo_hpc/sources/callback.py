"""The object a beamline subscribes to its RunEngine: ``RE.subscribe(TomoCallback(...))``.

A :class:`~.threaded.ThreadedCallback` (bounded queue, frame documents dropped and reported when
a slow sink lets it fill) around the synchronous :class:`~.documents.TomoRunRouter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..sinks.sink import Sink
from .darkflat import DarkFlatResolver
from .documents import TomoRunRouter
from .recognise import Preset
from .threaded import FRAME_DOCUMENTS, ThreadedCallback

__all__ = ["TomoCallback"]


class TomoCallback(ThreadedCallback):
    """Thread-backed, never-raising RunEngine callback around :class:`TomoRunRouter`."""

    def __init__(self, sink_factory: Callable[[], Sink], *,
                 dark_flat_resolver: DarkFlatResolver | None = None,
                 presets: Mapping[str, Preset] | Sequence[Preset] | None = None,
                 queue_size: int = 10_000, put_timeout: float = 1.0,
                 router: TomoRunRouter | None = None, **router_kwargs: Any):
        self.router = router or TomoRunRouter(sink_factory, dark_flat_resolver=dark_flat_resolver,
                                              presets=presets, **router_kwargs)
        super().__init__(self.router, name="TomoCallback", max_queue=queue_size,
                         droppable=FRAME_DOCUMENTS, put_timeout=put_timeout, on_drop=self._dropped)

    def _dropped(self, name: str, doc: dict[str, Any]) -> None:
        run = doc.get("run_start") or doc.get("descriptor") or "?"
        self.router.report(str(run), f"queue full ({self.max_queue}): {name} document dropped, "
                           "its frames are lost for live processing")

    @property
    def errors(self) -> list[tuple[str, str]]:
        """(run uid, message) of everything that went wrong, oldest first (kept by the router)."""
        return self.router.errors

    def errors_for(self, run_uid: str) -> list[str]:
        return self.router.errors_for(run_uid)
