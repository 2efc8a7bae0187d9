"""Who makes a result: an exclusive claim on ``<result>.lock``, taken before its ``.partial`` folder.

Why: several processes may share one data folder (two workers given the same scan, two
``reprocess`` of one catalog, a batch job and the worker). Without a claim each removed the other's
``.partial`` folder as "left by an earlier attempt" and both failed. With it, whoever claims a
result first makes it; the others skip it ("made by another process"), which is no failure.

Why ``flock``: the kernel drops the claim when its process dies, even by SIGKILL, so a
``.partial`` folder found while holding the claim was left by a process that is gone: it is
replaced, and the loss is recorded (see :class:`~.volume_files.VolumeWriter`). The lock file is
removed on release; a process that opened it before then finds it unlinked and opens it again.
On a file system without ``flock`` (some network mounts) the claim degrades to a warning, and on
Windows (no ``fcntl``) there is none: there, one process per data folder.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no claim (see the module docstring)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


class ResultClaimedError(FileExistsError):
    """Another live process is making this result: skip it, it is not a failure."""


def lock_path(result_dir: Path) -> Path:
    """The claim's lock file, beside the result folder."""
    return result_dir.with_name(result_dir.name + ".lock")


class ResultClaim:
    """The claim of this process on one result; :meth:`release` it when the result is made or
    failed (process exit releases it too)."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def take(cls, result_dir: Path) -> ResultClaim:
        """Claim ``result_dir`` without waiting; :class:`ResultClaimedError` when another process has it."""
        path = lock_path(Path(result_dir))
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # a holder releasing meanwhile unlinks the file: open the new one
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ResultClaimedError(_claimed_line(result_dir, path)) from None
                log.warning("cannot lock %s (%s): making %s without a claim", path, exc, result_dir)
                return cls(path, -1)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                return cls(path, fd)
            os.close(fd)
        raise ResultClaimedError(_claimed_line(result_dir, path))

    def release(self) -> None:
        """Give the claim up (idempotent): the lock file is removed, then unlocked."""
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0


def _claimed_line(result_dir: Path, path: Path) -> str:
    try:
        holder = path.read_text(errors="replace").split()[:2]
    except OSError:
        holder = []
    who = f"process {holder[0]} on {holder[1]}" if len(holder) == 2 else "another process"
    return f"{result_dir} is being made by another process ({who} holds {path.name}); skipped here"
