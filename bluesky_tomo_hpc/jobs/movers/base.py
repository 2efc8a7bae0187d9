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
