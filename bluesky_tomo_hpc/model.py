"""The normalised stream every source produces and every sink consumes.

A *source* (Bluesky documents, EPICS PVA frames, an HDF5 file, a Tiled catalog) turns what it
receives into exactly one :class:`ScanSpec` followed by any number of :class:`FrameBatch` es and
one :class:`ScanEnd`. Sinks (preview, full volume, batch job, results writer) never see a
document, so each of them can be tested with plain arrays.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class FrameRole(enum.StrEnum):
    """What a frame is for. ``str`` so it survives JSON and msgpack unchanged."""

    DARK = "dark"
    FLAT = "flat"
    PROJECTION = "projection"


@dataclass(frozen=True)
class ScanSpec:
    """Everything a sink needs to know about a scan before its frames arrive.

    Angles in :class:`FrameBatch` are always radians; ``angle_units`` records what the source
    declared, so that a provenance record can say so.
    """

    run_uid: str
    frame_shape: tuple[int, int]
    dtype: str = "uint16"
    detector_key: str = "det"
    scan_id: int | None = None
    plan_name: str | None = None
    n_projections: int | None = None
    n_darks: int | None = None
    n_flats: int | None = None
    angle_units: str = "deg"
    #: role -> stream name (or "run:<uid>/<stream>" for a separate dark/flat run)
    streams: dict[str, str] = field(default_factory=dict)
    dark_flat_uid: str | None = None
    #: raw files on disk (HDF5 etc.) that hold the frames; empty when frames travel in events
    raw_files: tuple[str, ...] = ()
    #: which kind of source produced this ("documents", "pva", "file", "catalog")
    source: str = "documents"
    #: sample, instrument, user metadata; the whole ``start["tomo"]`` dict lives under "tomo"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FrameBatch:
    """A run of consecutive frames of one role.

    ``indices`` number the frames within their role (0-based, as acquired), so a sink can place
    a frame that arrives late or twice. ``timestamps`` (epoch seconds) let flats taken before and
    after the projections be interpolated in time.
    """

    role: FrameRole
    indices: np.ndarray
    frames: np.ndarray
    angles: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    run_uid: str = ""
    #: where these frames live on disk, when they do: (file path, dataset, first index, stop
    #: index) in that dataset. Lets a batch job read the raw file in place instead of a copy.
    origin: tuple[str, str, int, int] | None = None

    def __post_init__(self) -> None:
        n = len(self.indices)
        if self.frames.ndim != 3 or self.frames.shape[0] != n:
            raise ValueError(
                f"FrameBatch({self.role.value}): frames must be (n, ny, nx) with n == "
                f"len(indices) == {n}, got shape {self.frames.shape}"
            )
        if self.angles is not None and len(self.angles) != n:
            raise ValueError(
                f"FrameBatch({self.role.value}): {len(self.angles)} angles for {n} frames"
            )

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class ScanEnd:
    """The end of a scan: how it ended and how many frames the source saw of each role."""

    run_uid: str
    exit_status: str = "success"
    reason: str = ""
    num_frames: dict[str, int] = field(default_factory=dict)
    time: float | None = None


class TomoDataError(ValueError):
    """Bad or incomplete scan data; the message names what is wrong and in which run."""


class MissingCalibrationError(TomoDataError):
    """A scan lacks dark or flat frames that normalisation needs."""


@dataclass
class ScanData:
    """A whole scan as arrays, ready for the engine: what a file loader returns and what the
    full-volume sink reads back, slab by slab, from a staged stream.

    ``projections`` is (n_angles, ny, nx); ``theta`` is radians; ``darks``/``flats`` are
    (n, ny, nx) and may be empty (normalisation then refuses with a clear error).
    """

    projections: np.ndarray
    theta: np.ndarray
    darks: np.ndarray
    flats: np.ndarray
    projection_times: np.ndarray | None = None
    flat_times: np.ndarray | None = None
    run_uid: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.projections.shape)  # type: ignore[return-value]


# -- names from outside ---------------------------------------------------------------------------
# The one rule for strings that come from outside (run uids, sample and plan names, detector keys,
# file names in documents, catalog keys, network payloads): any of them can become part of a file
# name here (jobs, journals, previews, TIFFs, staging, results, Tiled keys), so each passes through
# safe_component() first, and every path made from one is checked by path_inside(). A string that
# is already safe (a uuid, "scan_42") comes back unchanged, so ordinary data keeps its ordinary
# names. Anything else has each character outside [A-Za-z0-9._-] replaced by "_" and a short hash
# of the original appended, so two different hostile strings never share a folder. Strings that
# cannot be made safe (not text, empty, a NUL, longer than MAX_INPUT_CHARS) are refused with
# UnsafeNameError, which names the problem. Shell lines are a separate matter: a value never
# reaches one; script templates take values through files, the environment or shlex.quote-d argv
# (see jobs/executors/slurm.py).

#: longest outside string accepted at all (a uid is 36 characters; a sample name rarely 100)
MAX_INPUT_CHARS = 1024
#: longest component produced (hash suffix included), well under every filesystem's 255 bytes
MAX_COMPONENT_CHARS = 96

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._-]")


class UnsafeNameError(ValueError):
    """An outside string that cannot be turned into a safe name; the message says why."""


def safe_component(value: object, what: str = "name") -> str:
    """``value`` as one path component: no separators, no leading dot, ASCII, length-limited.

    ``what`` names the value in the refusal ("run uid", "sample name").
    """
    if not isinstance(value, str):
        raise UnsafeNameError(f"{what} must be text, not {type(value).__name__} ({value!r:.60})")
    if not value.strip():
        raise UnsafeNameError(f"{what} is empty; give a non-empty name")
    if "\x00" in value:
        raise UnsafeNameError(f"{what} {value[:40]!r}... contains a NUL character; it is refused")
    if len(value) > MAX_INPUT_CHARS:
        raise UnsafeNameError(
            f"{what} is {len(value)} characters long; at most {MAX_INPUT_CHARS} are accepted")
    if _SAFE.fullmatch(value) and len(value) <= MAX_COMPONENT_CHARS and value not in (".", ".."):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    stem = _UNSAFE_CHAR.sub("_", value).lstrip(".-") or "_"  # no hidden file, no "-option"
    return f"{stem[: MAX_COMPONENT_CHARS - len(digest) - 1]}-{digest}"


def name_or_hash(value: object, what: str = "name", prefix: str = "run-") -> str:
    """:func:`safe_component` of ``value``, or (a value that cannot be a name: NUL, 10 kB, not
    text) ``prefix`` and a hash of it, so what it names is still kept, under a safe name."""
    try:
        return safe_component(value, what)
    except UnsafeNameError:
        return prefix + hashlib.sha256(repr(value).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def path_inside(folder: str | Path, *parts: object, what: str = "name") -> Path:
    """``folder / part / ...`` with every part made safe, checked to resolve inside ``folder``.

    The check catches what the components cannot: a symlink planted inside the folder that
    points out of it.
    """
    root = Path(folder)
    path = root.joinpath(*(safe_component(p, what) for p in parts))
    resolved_root = root.resolve()
    if not path.resolve().is_relative_to(resolved_root):
        raise UnsafeNameError(f"{path} leads outside {resolved_root} (a symbolic link?); refused")
    return path
