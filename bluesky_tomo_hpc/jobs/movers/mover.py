"""The mover interface. A transfer is *done* only when the service says so AND the arrival is
verified (sizes, and checksums where the mover can compute them); anything less raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class TransferError(RuntimeError):
    """A transfer failed or could not be verified; ``transient`` says whether to retry."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class TransferResult:
    """A finished, verified transfer."""

    source: str
    destination: str
    files: int
    bytes: int
    seconds: float
    task_id: str | None = None
    checksums: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Mover(Protocol):
    """Copies between two locations; paths are strings in each location's own namespace."""

    name: str

    def copy(self, source: str, destination: str) -> TransferResult: ...

    def exists(self, path: str, *, at: str = "destination") -> bool: ...

    def size(self, path: str, *, at: str = "destination") -> int | None: ...

    def delete(self, path: str, *, at: str = "destination") -> None: ...


@runtime_checkable
class StagedMover(Protocol):
    """A mover whose transfers can be followed step by step (the job monitor must never block for
    the hours a large transfer takes, and must find the transfer again after a restart: the task
    id it gets from :meth:`start` is what the journal keeps)."""

    name: str

    def start(self, source: str, destination: str, *, recursive: bool = False, label: str = "") -> str: ...

    def check(self, task_id: str, source: str, destination: str) -> TransferResult | None:
        """None while under way; the verified result when done; :class:`TransferError` otherwise."""
        ...

    def cancel(self, task_id: str) -> None: ...

    def exists(self, path: str, *, at: str = "destination") -> bool: ...
