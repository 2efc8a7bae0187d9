"""One interface for every place a job can run: submit, status, cancel, logs.

An executor only translates; it keeps no state of its own beyond the *handle* it returns from
``submit`` (a Slurm job id, a run folder, a task id), which the journal stores, so a new process
can follow a job that an old one submitted. Faults are raised as :class:`TransientError` (retry
later) or :class:`PermanentError` (retrying cannot help: permission denied, missing input, bad
credentials), and the monitor acts on that distinction alone.
"""

from __future__ import annotations

import enum
import re
import signal
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ...batch.job import ReconJob


class RemoteState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    #: the executor no longer knows the job (purged, node lost, never existed)
    LOST = "LOST"

    @property
    def terminal(self) -> bool:
        return self not in (RemoteState.PENDING, RemoteState.RUNNING)


@dataclass(frozen=True)
class RemoteStatus:
    """What an executor says about a job; ``transient`` tells whether a failure may pass on retry."""

    state: RemoteState
    exit_code: int | None = None
    reason: str = ""
    transient: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


class ExecutorError(RuntimeError):
    """An executor could not do what was asked; the message says what and why."""

    transient = False


class TransientError(ExecutorError):
    """A fault that may pass (network, scheduler busy, 5xx): retry with backoff."""

    transient = True


class PermanentError(ExecutorError):
    """A fault a retry cannot fix (permission denied, expired credentials, missing input)."""

    transient = False


@runtime_checkable
class Executor(Protocol):
    """Where jobs run. Handles are strings so the journal can keep them.

    ``max_running``: how many of its jobs may run at once (``None``: no limit here, the site's
    scheduler queues them); the monitor holds further jobs STAGED until one ends.
    """

    name: str
    max_running: int | None

    def submit(self, job: ReconJob) -> str: ...

    def status(self, handle: str) -> RemoteStatus: ...

    def cancel(self, handle: str) -> None: ...

    def logs(self, handle: str) -> str: ...


#: what mpich's hydra (and a shell) print when a process died of a signal
_SIGNAL_LINES = (
    re.compile(r"EXIT STRING: .*\(signal (\d+)\)"),
    re.compile(r"KILLED BY SIGNAL: (\d+)"),
    re.compile(r"terminated by signal (\d+)", re.IGNORECASE),
)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def killing_signal(log_text: str) -> int | None:
    """The signal that killed an MPI rank, as the launcher reported it in the job's log."""
    for pattern in _SIGNAL_LINES:
        if m := pattern.search(log_text):
            return int(m.group(1))
    return None


def status_from_exit_code(code: int | None, reason: str = "", log_text: str = "") -> RemoteStatus:
    """Completed/failed from a batch-program exit code, with its permanence (see ``batch.batch_program``).

    A rank killed by a signal (the OOM killer, a node's watchdog, an operator's ``kill``) is a
    transient failure named by its signal, whether the launcher says so in the log or the shell
    reports 128 + N."""
    from ...batch.batch_program import EX_TEMPFAIL, PERMANENT_EXIT_CODES

    if code == 0:
        return RemoteStatus(RemoteState.COMPLETED, 0, reason)
    sig = killing_signal(log_text)
    if sig is None and code is not None and code > 128 and code - 128 < signal.NSIG:
        sig = code - 128
    if sig is not None:
        why = f"an MPI rank was killed by {signal_name(sig)} (signal {sig}); exit code {code}"
        return RemoteStatus(RemoteState.FAILED, code, why, transient=True)
    transient = code == EX_TEMPFAIL or (code is not None and code not in PERMANENT_EXIT_CODES and code >= 128)
    why = f"batch program exited with {code}" + (f": {reason}" if reason else "")
    if code in PERMANENT_EXIT_CODES:
        why += " (permanent: bad or missing input, or permission denied)"
    return RemoteStatus(RemoteState.FAILED, code, why, transient=transient)
