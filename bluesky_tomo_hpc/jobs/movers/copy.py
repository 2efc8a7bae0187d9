"""Local (POSIX) copies, verified by SHA-256 of every file that arrived."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from .mover import TransferError, TransferResult


def sha256(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())


class LocalMover:
    """Copy within one filesystem namespace; both ``at`` sides are the local disk."""

    name = "local"

    def copy(self, source: str, destination: str) -> TransferResult:
        src, dst = Path(source), Path(destination)
        if not src.exists():
            raise TransferError(f"source {src} does not exist")
        t = time.perf_counter()
        try:
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        except PermissionError as exc:
            raise TransferError(f"copy {src} -> {dst}: permission denied ({exc})") from exc
        except OSError as exc:
            raise TransferError(f"copy {src} -> {dst} failed: {exc}", transient=True) from exc
        sums: dict[str, str] = {}
        total = 0
        for f in _files(src):
            rel = f.relative_to(src) if src.is_dir() else Path(f.name)
            g = dst / rel if src.is_dir() else dst
            a, b = sha256(f), sha256(g) if g.exists() else None
            if a != b:
                raise TransferError(f"copy {src} -> {dst}: {g} missing or checksum differs", transient=True)
            sums[str(rel)] = a
            total += f.stat().st_size
        return TransferResult(str(src), str(dst), len(sums), total, time.perf_counter() - t, checksums=sums)

    def start(self, source: str, destination: str, *, recursive: bool = False, label: str = "") -> str:
        """Copy now (a local copy has no service to hand it to) and return a task id for :meth:`check`.

        ``recursive`` is implied by the source being a folder; ``label`` is unused."""
        self.copy(source, destination)
        return f"local-{os.urandom(6).hex()}"

    def check(self, task_id: str, source: str, destination: str) -> TransferResult | None:
        """The copy :meth:`start` made and checksummed; re-checked here by sizes, as it may be
        looked at much later (after a restart) and something may have removed it meanwhile."""
        src, dst = self.size(source), self.size(destination)
        if dst is None:
            raise TransferError(f"{task_id}: {destination} is gone (copied from {source})", transient=True)
        if src is not None and src != dst:
            raise TransferError(f"{task_id}: {destination} has {dst} bytes, {source} {src}", transient=True)
        files = len(_files(Path(destination)))
        return TransferResult(source, destination, files, dst, 0.0, task_id=task_id)

    def cancel(self, task_id: str) -> None:
        """Nothing to cancel: :meth:`start` returns only when its copy is done."""

    def exists(self, path: str, *, at: str = "destination") -> bool:
        return Path(path).exists()

    def size(self, path: str, *, at: str = "destination") -> int | None:
        p = Path(path)
        if not p.exists():
            return None
        return sum(f.stat().st_size for f in _files(p))

    def delete(self, path: str, *, at: str = "destination") -> None:
        p = Path(path)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
