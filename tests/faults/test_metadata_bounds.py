"""Sample quantities checked against physical bounds and finite SI values; SciCat payloads built
from hostile metadata sanitised (MongoDB-safe keys) and bounded (text, depth, size)."""

from __future__ import annotations

import json
import math

import pytest

from bluesky_tomo_hpc.metadata.sample import SampleLibrary, SampleMetadataError, parse_sample


@pytest.mark.parametrize("conditions, field", [
    ({"temperature": "-500 degC"}, "conditions.temperature"),
    ({"temperature": "-1 K"}, "conditions.temperature"),
    ({"temperature": "1e12 K"}, "conditions.temperature"),
    ({"pressure": "-5 bar"}, "conditions.pressure"),
    ({"pressure": "1e308 Tbar"}, "conditions.pressure"),
    ({"other": {"x": "1 m**99999999"}}, "conditions.other.x"),
    ({"other": {"x": "2 km**400"}}, "conditions.other.x"),
    ({"humidity": "150 percent"}, "conditions.humidity"),
    ({"strain": "-2"}, "conditions.strain"),
    ({"elapsed": "-5 s"}, "conditions.elapsed"),
    ({"magnetic_field": "1e9 T"}, "conditions.magnetic_field"),
])
def test_quantities_outside_physical_bounds_are_refused(world, conditions, field):
    """Below absolute zero, negative pressure, infinite SI, m**1e8: one line naming the field."""
    with pytest.raises(SampleMetadataError) as info:
        parse_sample({"name": "s1", "conditions": conditions})
    message = str(info.value)
    assert field in message and "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize("conditions", [
    {"temperature": "300 degC"}, {"temperature": "4 K"}, {"pressure": "20 GPa"}, {"load": "-5 N"},
    {"humidity": "40 percent"}, {"strain": "-0.1"}, {"voltage": "-5 V"}, {"other": {"x": "1e20 m**-3"}},
])
def test_quantities_within_bounds_are_kept_with_finite_si_values(world, conditions):
    """Ordinary in situ conditions (even negative loads and voltages) keep their finite SI values."""
    sample = parse_sample({"name": "s1", "conditions": conditions})
    stored = json.dumps(sample.document())
    for q in json.loads(stored)["conditions"].values():
        for item in ([q] if "si_value" in q else q.values()):
            assert math.isfinite(item["si_value"])


def test_library_file_with_an_impossible_quantity_names_the_file(world):
    """A library sample file with -500 degC: refused naming the file and the field, not its other lines."""
    (world.data / "hot.yml").write_text(
        "name: hot\ndescription: SECRET-NOTE\nconditions: {temperature: -500 degC}\n")
    with pytest.raises(SampleMetadataError) as info:
        SampleLibrary(world.data).get("hot")
    assert "hot.yml" in str(info.value) and "conditions.temperature" in str(info.value)
    assert "SECRET-NOTE" not in str(info.value)


# -- SciCat ---------------------------------------------------------------------------------------
def _keys(obj) -> list[str]:
    if isinstance(obj, dict):
        return list(obj) + [k for v in obj.values() for k in _keys(v)]
    if isinstance(obj, list):
        return [k for v in obj for k in _keys(v)]
    return []


def _deep(n: int) -> dict:
    node: dict = {"leaf": 1}
    for _ in range(n):
        node = {"d": node}
    return node


HOSTILE_MD = {
    "start": {"time": 1.0},
    "tomo": {"$where": "sleep(1000)", "a.b": 1, "a_b": 2, "nested": {"$gt": {"x.y": float("nan")}},
             "inf": float("inf"), "deep": _deep(60), "many": list(range(5000)), "blob": "x" * 2_000_000},
    "sample": {"name": "n" * 1_000_000, "id": "$id.with.dots" * 1000, "material": {"category": "$ne"}},
    "series": {"id": "s" * 10_000},
}


@pytest.mark.parametrize("uid", ["run-1", "../../datasets/x?y=1", "u" * 10_240, "x\x00y"])
def test_scicat_payloads_are_sanitised_and_bounded(world, uid):
    """$ and . keys, 1 MB names, NaN, 60 levels, 5000 items, hostile uids: a payload SciCat can take."""
    from pyscicat.model import DerivedDataset, RawDataset

    from bluesky_tomo_hpc.engine.params import ReconParams
    from bluesky_tomo_hpc.model import ScanEnd, ScanSpec
    from bluesky_tomo_hpc.publishing.scicat import derived_dataset, raw_dataset
    from bluesky_tomo_hpc.publishing.scicat_payload import MAX_PAYLOAD_CHARS
    from bluesky_tomo_hpc.settings import ScicatSettings

    spec = ScanSpec(run_uid=uid, frame_shape=(4, 4), plan_name="p" * 100_000, metadata=HOSTILE_MD)
    raw = raw_dataset(spec, ScanEnd(run_uid=uid), ScicatSettings())

    class _Result:
        params, center, center_confidence = ReconParams(), 1.0, 1.0

        class volume:  # noqa: N801 - what derived_dataset reads of a volume
            shape = (4, 4, 4)

    derived = derived_dataset(spec, type("Outcome", (), {"result": _Result})(), ScicatSettings())
    for payload, model in ((raw, RawDataset), (derived, DerivedDataset)):
        text = json.dumps(payload, allow_nan=False)  # no NaN or inf left
        assert len(text) <= MAX_PAYLOAD_CHARS + 4096
        keys = _keys(payload)
        assert not [k for k in keys if k.startswith("$") or "." in k]
        assert "/" not in payload["pid"] and "?" not in payload["pid"] and len(payload["pid"]) <= 128
        model(**payload)  # pyscicat's own model takes it
    assert len(raw["sampleId"]) <= 128 and len(raw["datasetName"]) <= 256
    tomo = raw["scientificMetadata"]["tomo"]
    assert tomo["a_b"] == 2 and any(k.startswith("a_b_") for k in tomo)  # "a.b" kept beside "a_b"
