"""A stored run's documents, rebuilt on the client from any Tiled that ``TiledWriter`` wrote to.

``run.documents()`` asks the server for ``application/json-seq``, which only servers configured
with bluesky-tiled-plugins' exporter answer (a facility's standard Tiled says HTTP 406). This
rebuilds the same stream from what every Tiled serves: the start (and stop) from the run's
metadata, descriptors from each stream's metadata (bluesky-tiled-plugins' own
``build_descriptor_docs``), events from the stream's internal table and internal arrays (read in
chunks, so memory stays bounded), and ``stream_resource``/``stream_datum`` from the data sources
of external arrays (the detector files, read by the router from where they lie). It follows the
layout of bluesky-tiled-plugins' server-side exporter, so either gives the router the same run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: internal-array rows read per request (frames stored in Tiled itself, e.g. ophyd v1 detectors)
ROWS_PER_READ = 32


def is_bluesky_run(node: Any) -> bool:
    """Whether a catalog entry is a Bluesky run (a container with the BlueskyRun spec)."""
    specs = {getattr(s, "name", s) for s in (getattr(node, "specs", None) or [])}
    metadata = getattr(node, "metadata", None) or {}
    return "BlueskyRun" in specs and isinstance(metadata.get("start"), dict)


def run_documents(run: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(name, doc)`` of a stored run: start, per stream descriptors / events / stream_resource /
    stream_datum, then the stop if the run has one (a run Tiled lost the stop of has none)."""
    md = run.metadata
    start = dict(md["start"])
    yield "start", start
    streams = sorted(run, key=lambda name: run[name].metadata.get("time", 0.0))
    for name in streams:
        yield from _stream_documents(run[name], name, start["uid"])
    if md.get("stop"):
        yield "stop", dict(md["stop"])


def _stream_documents(stream: Any, name: str, run_uid: str) -> Iterator[tuple[str, dict[str, Any]]]:
    from bluesky_tiled_plugins.exporters import build_descriptor_docs

    smd = dict(stream.metadata)
    descriptors = build_descriptor_docs(smd, stream_name=name, run_start_uid=run_uid)
    for desc in descriptors:
        yield "descriptor", desc
    desc_uid = descriptors[0]["uid"]
    data_keys = smd.get("data_keys", {})
    base = stream.base
    parts = list(base)
    rows: dict[int, dict[str, Any]] = {}  # seq_num -> {"time", "data", "timestamps"}
    if "internal" in parts:
        table = base["internal"].read()
        keys = [k for k in table.columns if k not in ("seq_num", "time") and not k.startswith("ts_")]
        for row in table.to_dict(orient="records"):
            rows[int(row["seq_num"])] = {
                "time": row["time"],
                "data": {k: _builtin(row[k]) for k in keys},
                "timestamps": {k: row.get(f"ts_{k}", row["time"]) for k in keys},
            }
    internal_arrays = [p for p in parts if p != "internal" and not data_keys.get(p, {}).get("external")]
    external = [p for p in parts if p != "internal" and data_keys.get(p, {}).get("external")]
    seq_nums = sorted(rows)
    yield from _events(base, internal_arrays, rows, seq_nums, desc_uid)
    for key in external:
        yield from _external(base[key], key, desc_uid, run_uid, data_keys[key])


def _events(base: Any, arrays: list[str], rows: dict[int, dict[str, Any]], seq_nums: list[int],
            desc_uid: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Events, with internal-array values read ``ROWS_PER_READ`` rows at a time."""
    n = len(seq_nums) or (int(base[arrays[0]].shape[0]) if arrays else 0)
    seq_nums = seq_nums or list(range(1, n + 1))
    for i0 in range(0, n, ROWS_PER_READ):
        chunk = seq_nums[i0:i0 + ROWS_PER_READ]
        values = {a: base[a][i0:i0 + len(chunk)] for a in arrays}
        for j, sn in enumerate(chunk):
            row = rows.get(sn, {"time": 0.0, "data": {}, "timestamps": {}})
            data, ts = dict(row["data"]), dict(row["timestamps"])
            for a in arrays:
                data[a] = values[a][j].tolist()
                ts.setdefault(a, row["time"])
            yield "event", {"uid": f"event-{desc_uid}-{sn}", "descriptor": desc_uid, "seq_num": sn,
                            "time": row["time"], "data": data, "timestamps": ts}


def _external(node: Any, key: str, desc_uid: str, run_uid: str,
              data_key: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """One stream_resource + one stream_datum spanning every frame of an external array."""
    ds = node.include_data_sources().data_sources()[0]
    uris = [a.data_uri for a in sorted(ds.assets, key=lambda a: a.num or 0)
            if a.parameter in ("data_uris", "data_uri")]
    parameters = dict(ds.parameters)
    structure = ds.structure
    total = tuple(structure["shape"] if isinstance(structure, dict) else structure.shape)
    datum_shape = tuple(data_key.get("shape") or ())
    stacked = len(total) == len(datum_shape) + 1
    n = total[0] if stacked or not datum_shape or not datum_shape[0] else total[0] // datum_shape[0]
    parameters.setdefault("join_method", "stack" if stacked else "concat")
    sres_uid = f"sr-{desc_uid}-{key}"
    yield "stream_resource", {"uid": sres_uid, "data_key": key, "run_start": run_uid,
                              "mimetype": ds.mimetype, "parameters": parameters,
                              "uri": uris[0] if uris else ds.assets[0].data_uri}
    yield "stream_datum", {"uid": f"sd-{desc_uid}-{key}-0", "stream_resource": sres_uid,
                           "descriptor": desc_uid, "indices": {"start": 0, "stop": n},
                           "seq_nums": {"start": 1, "stop": n + 1}}


def _builtin(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_builtin(v) for v in value]
    return value
