"""One line per command-line error, naming the problem and the fix, and an exit code by class.

Commands raise; :func:`describe` (called by the one handler in ``cli/main.py``) turns the
exception into ``(exit code, one line)``. ``--debug`` adds the traceback. The codes are
documented in ``docs/reference/exit-codes.md``; keep the two in step.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

from ..untrusted.secrets_mask import mask_text

#: the command ran, and reports that some of its work failed (failed jobs, runs, a timeout)
EXIT_FAILED = 1
#: bad command line, parameter value or settings, or a package the chosen feature needs is not
#: installed (argparse uses 2 as well)
EXIT_USAGE = 2
#: input data missing, unreadable or unusable (not HDF5, wrong angles, damaged journal)
EXIT_INPUT = 3
#: output cannot be written (permission, read-only file system, disk full)
EXIT_OUTPUT = 4
#: a service or address cannot be reached or used (Tiled, 0MQ, Slurm)
EXIT_SERVICE = 5
#: a bug: the message says what, --debug shows where
EXIT_INTERNAL = 70
#: Ctrl-C
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    0: "success",
    EXIT_FAILED: "the command ran, and some of its work failed (the output says which)",
    EXIT_USAGE: "bad command line, parameter value or settings, or a chosen feature's package not installed",
    EXIT_INPUT: "input data missing, unreadable or unusable",
    EXIT_OUTPUT: "output cannot be written (permission, read-only or full file system)",
    EXIT_SERVICE: "a service or network address cannot be reached or used",
    EXIT_INTERNAL: "internal error (a bug): rerun with --debug and report the traceback",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


@dataclass
class CliError(Exception):
    """Raised by a command for an error it has already put into words."""

    message: str
    code: int = EXIT_USAGE

    def __str__(self) -> str:
        return self.message


_OUTPUT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def one_line(text: object, limit: int = 400) -> str:
    """``text`` as one printable line: whitespace runs become one blank, control characters
    (terminal escapes in a hostile uid) become ``?``, and it is cut at ``limit`` characters."""
    line = "".join(c if c.isprintable() else "?" for c in " ".join(str(text).split()))
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _validation_line(exc: object) -> str:
    from ..untrusted.outside_files import validation_line

    return validation_line(exc.errors())  # type: ignore[attr-defined]


def writable_folder(path: str | Path, option: str) -> Path:
    """``path`` made (with parents) and checked writable, or a :class:`CliError` naming ``option``.

    Why up front: a command that fails to write its first output after minutes of work wastes
    them; and the OS error alone does not say which option to change.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError | NotADirectoryError):
            why = "a file is in the way"
        raise CliError(f"cannot write to {option} {folder}: {why}; choose a folder you can write to",
                       EXIT_OUTPUT) from exc
    return folder


def _url_of(exc: BaseException) -> str:
    try:
        return str(exc.request.url)  # type: ignore[attr-defined]  # httpx errors; raises when unset
    except (AttributeError, RuntimeError):
        return ""


def describe(exc: BaseException) -> tuple[int, str]:
    """``(exit code, one line)`` for an exception that ended a command, secrets masked."""
    code, line = _describe(exc)
    return code, mask_text(line)  # an exception's text may quote a URI with its password


def _describe(exc: BaseException) -> tuple[int, str]:
    import httpx
    import yaml
    from pydantic import ValidationError

    from ..extras import missing_package
    from ..model import TomoDataError

    if isinstance(exc, CliError):
        return exc.code, one_line(exc.message)
    # a package missing, even behind a wrapper (a failed volume write, an executor's error), is
    # the installation to change: never a service to reach or a file to check
    missing = missing_package(exc)
    if missing is not None:
        return EXIT_USAGE, one_line(missing)
    zmq = sys.modules.get("zmq")  # not imported: the error cannot be 0MQ's
    if isinstance(exc, ValidationError):
        return EXIT_USAGE, one_line(f"invalid {exc.title}: {_validation_line(exc)}")
    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.name} line {mark.line + 1}" if mark else "the input"
        return EXIT_USAGE, one_line(
            f"{where} is not valid YAML ({getattr(exc, 'problem', None) or exc}); fix it")
    if isinstance(exc, TomoDataError):
        return EXIT_INPUT, one_line(str(exc))
    if zmq is not None and isinstance(exc, zmq.ZMQError):
        return EXIT_SERVICE, one_line(
            f"0MQ: {exc}; give an address such as tcp://127.0.0.1:5578 that a proxy or worker serves")
    if isinstance(exc, ConnectionError | TimeoutError | httpx.TransportError):
        return EXIT_SERVICE, one_line(
            f"cannot reach {_url_of(exc) or 'the service'}: {exc}; is it running, and is the address right?")
    if isinstance(exc, sqlite3.DatabaseError):
        return EXIT_INPUT, one_line(
            f"the jobs journal is damaged or not a journal ({exc}); move it aside (a new one is made) "
            "or restore it from a copy")
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        name = exc.filename or exc
        return EXIT_INPUT, one_line(f"{name}: {exc.strerror or exc}; check the path")
    if isinstance(exc, OSError):
        text = str(exc)
        if exc.errno in _OUTPUT_ERRNOS:
            return EXIT_OUTPUT, one_line(
                f"cannot write {exc.filename or ''}: {exc.strerror}; choose a folder you can write to "
                "(--out, --data-dir or data_dir in the settings) or free space")
        return EXIT_INPUT, one_line(f"{text}; check the path and the file")
    if isinstance(exc, ValueError):  # our own parameter checks word their messages for the user
        return EXIT_USAGE, one_line(str(exc))
    return EXIT_INTERNAL, one_line(
        f"internal error {type(exc).__name__}: {exc}; rerun with --debug for the traceback and report it")


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts (projections, rows, ranks, binning): an integer >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; give a whole number of at least 1")
    return value
