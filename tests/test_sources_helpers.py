"""Hand-built Bluesky document streams (event_model.compose_run) for the sources tests.

Each builder writes the frames it announces into a real HDF5 file (frame ``k`` of the file is
filled with ``k + 1``, so a frame's identity survives any order) and returns the documents in
*live* order together with the frames each role should end up with.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from event_model import compose_run

from bluesky_tomo_hpc.model import FrameBatch, FrameRole, ScanEnd, ScanSpec

SHAPE = (4, 5)
IMAGE_KEY = {"source": "sim", "dtype": "array", "dtype_numpy": "<u2", "shape": [1, *SHAPE],
             "external": "STREAM:"}
ANGLE_KEY = {"source": "sim", "dtype": "number", "shape": [], "units": "deg"}


class RecordingSink:
    """A complete Sink that keeps everything it is given (what a real sink would consume)."""

    def __init__(self, fail_on: str | None = None):
        self.specs: list[ScanSpec] = []
        self.batches: list[FrameBatch] = []
        self.ends: list[ScanEnd] = []
        self.fail_on = fail_on

    def open(self, spec: ScanSpec) -> None:
        if self.fail_on == "open":
            raise RuntimeError("sink refuses to open")
        self.specs.append(spec)

    def add(self, batch: FrameBatch) -> None:
        if self.fail_on == "add":
            raise RuntimeError("sink add exploded")
        self.batches.append(batch)

    def close(self, end: ScanEnd) -> None:
        self.ends.append(end)

    def role(self, role: FrameRole) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(indices, frames, angles) of one role, sorted by index."""
        got = [b for b in self.batches if b.role is role]
        if not got:
            return np.empty(0, int), np.empty((0, *SHAPE)), None
        idx = np.concatenate([b.indices for b in got])
        frames = np.concatenate([b.frames for b in got])
        angles = None if any(b.angles is None for b in got) else np.concatenate([b.angles for b in got])
        order = np.argsort(idx, kind="stable")
        return idx[order], frames[order], None if angles is None else angles[order]


class SinkFactory:
    def __init__(self, **kwargs: Any):
        self.sinks: list[RecordingSink] = []
        self.kwargs = kwargs

    def __call__(self) -> RecordingSink:
        sink = RecordingSink(**self.kwargs)
        self.sinks.append(sink)
        return sink


@dataclass
class Run:
    uid: str
    docs: list[tuple[str, dict]]
    expected: dict[FrameRole, np.ndarray]  # frames per role, in index order
    angles_deg: np.ndarray
    files: list[str] = field(default_factory=list)


def _frames(start: int, n: int) -> np.ndarray:
    return (np.arange(start, start + n, dtype=np.uint16)[:, None, None] + 1) * np.ones(SHAPE, np.uint16)


def _tomo(n_proj: int, **over: Any) -> dict[str, Any]:
    tomo = {"version": 1, "layout": "streams", "detector": "det", "rotation_axis": "rot",
            "angle_units": "deg", "streams": {"projection": "primary", "dark": "dark", "flat": "flat"},
            "num_projections": n_proj, "angles": {"start": 0.0, "stop": 180.0, "num": n_proj,
                                                  "endpoint": False}}
    tomo.update(over)
    return tomo


def streams_run(folder: Path, *, n_dark: int = 2, n_flat: int = 3, n_proj: int = 6,
                fly: bool = False, chunk: int = 1, shared: bool = True,
                streams: tuple[str, ...] = ("dark", "flat", "primary"),
                tomo: dict[str, Any] | None = None, extra_md: dict[str, Any] | None = None) -> Run:
    """Dark, flat and primary streams of an ophyd-async style detector (StreamResource +
    StreamDatum). ``shared``: one StreamResource (one file) for all three streams, indices
    running on; ``fly``: no Event documents at all, StreamDatum ranges of ``chunk`` frames."""
    counts = {"dark": n_dark, "flat": n_flat, "primary": n_proj}
    role_of = {"dark": FrameRole.DARK, "flat": FrameRole.FLAT, "primary": FrameRole.PROJECTION}
    md = {"plan_name": "test_tomo", "scan_id": 7,
          "tomo": tomo if tomo is not None else _tomo(n_proj)}
    md.update(extra_md or {})
    bundle = compose_run(metadata=md)
    docs: list[tuple[str, dict]] = [("start", bundle.start_doc)]
    # measured angles differ a little from the planned ones, so a test can tell which was used
    planned = np.linspace(0, 180, n_proj, endpoint=False)
    angles = planned if fly else planned + 0.01 * (np.arange(n_proj) % 3 + 1)
    expected: dict[FrameRole, np.ndarray] = {}
    folder.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    total = sum(counts[s] for s in streams)
    shared_sr = None
    if shared:
        path = folder / f"{bundle.start_doc['uid']}.h5"
        with h5py.File(path, "w") as f:
            f["/entry/data/data"] = _frames(0, total)
        files.append(str(path))
        shared_sr = bundle.compose_stream_resource(
            mimetype="application/x-hdf5", uri=f"file://localhost{path}", data_key="det",
            parameters={"dataset": "/entry/data/data", "chunk_shape": [1, *SHAPE]})
    offset = 0
    t = 1000.0
    for stream in streams:
        n = counts[stream]
        keys = {"det": IMAGE_KEY}
        if stream == "primary":
            keys["rot"] = ANGLE_KEY
        desc = bundle.compose_descriptor(name=stream, data_keys=keys)
        docs.append(("descriptor", desc.descriptor_doc))
        if shared:
            sr, base = shared_sr, offset
            if stream == streams[0]:
                docs.append(("stream_resource", sr.stream_resource_doc))
        else:
            path = folder / f"{bundle.start_doc['uid']}-{stream}.h5"
            with h5py.File(path, "w") as f:
                f["/entry/data/data"] = _frames(offset, n)
            files.append(str(path))
            sr = bundle.compose_stream_resource(
                mimetype="application/x-hdf5", uri=f"file://localhost{path}", data_key="det",
                parameters={"dataset": "/entry/data/data"})
            docs.append(("stream_resource", sr.stream_resource_doc))
            base = 0
        expected[role_of[stream]] = _frames(offset, n)
        step = chunk if fly else 1
        for i in range(0, n, step):
            j = min(i + step, n)
            docs.append(("stream_datum", sr.compose_stream_datum(
                indices={"start": base + i, "stop": base + j},
                seq_nums={"start": i + 1, "stop": j + 1}, descriptor=desc.descriptor_doc)))
            if not fly:
                data = {"rot": float(angles[i])} if stream == "primary" else {}
                docs.append(("event", desc.compose_event(
                    data=data, timestamps=dict.fromkeys(data, t), seq_num=i + 1, time=t)))
                t += 1.0
        offset += n
    docs.append(("stop", bundle.compose_stop(exit_status="success")))
    return Run(bundle.start_doc["uid"], docs, expected, angles, files)


def filled_event_page_run(*, n_dark: int = 2, n_flat: int = 2, n_proj: int = 5) -> Run:
    """ophyd v1 style: images inside EventPages (no files), angle ``rot`` in the same page."""
    key = {"source": "sim", "dtype": "array", "shape": list(SHAPE)}
    bundle = compose_run(metadata={"plan_name": "v1", "tomo": _tomo(n_proj, detector="tomo_det_image")})
    docs: list[tuple[str, dict]] = [("start", bundle.start_doc)]
    angles = np.linspace(0, 180, n_proj, endpoint=False)
    expected = {}
    offset = 0
    for stream, n, role in (("dark", n_dark, FrameRole.DARK), ("flat", n_flat, FrameRole.FLAT),
                            ("primary", n_proj, FrameRole.PROJECTION)):
        keys = {"tomo_det_image": key}
        if stream == "primary":
            keys["rot"] = ANGLE_KEY
        desc = bundle.compose_descriptor(name=stream, data_keys=keys)
        docs.append(("descriptor", desc.descriptor_doc))
        frames = _frames(offset, n)
        expected[role] = frames
        data: dict[str, list] = {"tomo_det_image": [f.tolist() for f in frames]}  # JSON-like lists
        if stream == "primary":
            data["rot"] = [float(a) for a in angles]
        ts = {k: [1.0 + i for i in range(n)] for k in data}
        docs.append(("event_page", desc.compose_event_page(
            data=data, timestamps=ts, seq_num=list(range(1, n + 1)), time=[1.0 + i for i in range(n)],
            filled={}, uid=None)))
        offset += n
    docs.append(("stop", bundle.compose_stop()))
    return Run(bundle.start_doc["uid"], docs, expected, angles)


def legacy_ad_hdf5_run(folder: Path, *, n_dark: int = 2, n_flat: int = 2, n_proj: int = 4,
                       datum_after_event: bool = False) -> Run:
    """ophyd v1 AreaDetector HDF5 plugin: Resource(AD_HDF5) + DatumPage + Events of datum ids."""
    key = {"source": "PV:x", "dtype": "array", "shape": [SHAPE[1], SHAPE[0], 0], "external": "FILESTORE:"}
    bundle = compose_run(metadata={"plan_name": "v1_files", "tomo": _tomo(n_proj, detector="tomo_det_image")})
    docs: list[tuple[str, dict]] = [("start", bundle.start_doc)]
    angles = np.linspace(0, 180, n_proj, endpoint=False)
    expected = {}
    offset = 0
    folder.mkdir(parents=True, exist_ok=True)
    for stream, n, role in (("dark", n_dark, FrameRole.DARK), ("flat", n_flat, FrameRole.FLAT),
                            ("primary", n_proj, FrameRole.PROJECTION)):
        path = folder / f"{bundle.start_doc['uid']}-{stream}.h5"
        frames = _frames(offset, n)
        with h5py.File(path, "w") as f:
            f["/entry/data/data"] = frames
        expected[role] = frames
        keys = {"tomo_det_image": key}
        if stream == "primary":
            keys["rot"] = ANGLE_KEY
        desc = bundle.compose_descriptor(name=stream, data_keys=keys)
        docs.append(("descriptor", desc.descriptor_doc))
        res = bundle.compose_resource(spec="AD_HDF5", root=str(folder), resource_path=path.name,
                                      resource_kwargs={"frame_per_point": 1})
        docs.append(("resource", res.resource_doc))
        page = res.compose_datum_page(datum_kwargs={"point_number": list(range(n))})
        events = []
        for i in range(n):
            data = {"tomo_det_image": page["datum_id"][i]}
            if stream == "primary":
                data["rot"] = float(angles[i])
            events.append(("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 1.0),
                                                       seq_num=i + 1, filled={"tomo_det_image": False})))
        if datum_after_event:
            docs += events + [("datum_page", page)]
        else:
            docs += [("datum_page", page)] + events
        offset += n
    docs.append(("stop", bundle.compose_stop()))
    return Run(bundle.start_doc["uid"], docs, expected, angles)


def shuffled(docs: list[tuple[str, dict]], seed: int) -> list[tuple[str, dict]]:
    """Start, descriptors and resources first (the RunRouter needs them to route), then every
    event and stream_datum in random order, then stop."""
    head = [d for d in docs if d[0] in ("start", "descriptor", "stream_resource", "resource")]
    body = [d for d in docs if d[0] not in ("start", "descriptor", "stream_resource", "resource", "stop")]
    random.Random(seed).shuffle(body)
    return head + body + [d for d in docs if d[0] == "stop"]


def replay_order(docs: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The order of a Tiled export: start, descriptors, events, stream resources, stream datums, stop."""
    order = ["start", "descriptor", "event", "event_page", "stream_resource", "stream_datum", "stop"]
    return sorted(docs, key=lambda d: order.index(d[0]))
