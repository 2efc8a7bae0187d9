"""Sample metadata: validated before the scan (bad -> clear message, no run), stored as
start["sample"], carried into Tiled raw and processed, searchable there and in reprocess."""

from __future__ import annotations

import pytest

from bluesky_tomo_hpc.live.catalog_replay import RunQuery, tomography_runs
from bluesky_tomo_hpc.live.session import TomoPipeline
from bluesky_tomo_hpc.metadata.queries import QueryError, parse_where, where_query
from bluesky_tomo_hpc.metadata.sample import (
    SampleLibrary,
    SampleMetadataError,
    load_sample_file,
    parse_sample,
)
from bluesky_tomo_hpc.metadata.validate import install_sample_validator, with_sample
from bluesky_tomo_hpc.results.tiled_results import find_reconstructions
from bluesky_tomo_hpc.settings import Settings
from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
from bluesky_tomo_hpc.sim.plans import tomo_scan

SHAPE = (8, 48)
SCAN = {"num_projections": 36, "num_darks": 2, "num_flats": 2}
TI64 = {
    "name": "ti64-07",
    "id": "ALS-2026-0042",
    "material": {"category": "alloy", "composition": "Ti-6Al-4V", "tags": ["additive"]},
    "provenance": {"origin": "LBNL machine shop", "batch": "B7", "received": "2026-11-02"},
    "preparation": [{"step": "annealed", "parameters": {"temperature": "800 degC", "time": "2 h"}}],
    "conditions": {"temperature": "450 degC", "pressure": "1 bar", "atmosphere": "Ar", "load": "1.5 kN"},
}


# -- the schema ----------------------------------------------------------------------------------
def test_quantities_are_checked_and_stored_in_si_too():
    doc = parse_sample(TI64).document()
    temp = doc["conditions"]["temperature"]
    assert temp["units"] == "degree_Celsius" and temp["si_value"] == pytest.approx(723.15)
    assert temp["si_units"] == "K"
    assert doc["conditions"]["pressure"]["si_value"] == pytest.approx(1e5)
    assert doc["conditions"]["load"]["si_units"] == "N"
    assert doc["preparation"][0]["parameters"]["time"]["si_value"] == pytest.approx(7200)
    assert parse_sample(doc).document() == doc  # a stored document validates to itself
    assert parse_sample("plain").document() == {"name": "plain", "schema_version": 1}


@pytest.mark.parametrize("bad, words", [
    ({"conditions": {"temperature": "450 kg"}}, "conditions.temperature: '450.0 kg' is not a temperature"),
    ({"conditions": {"pressure": "3 furlongs_per_fortnight"}}, "unknown units"),
    ({"conditions": {"load": 3}}, "has no units"),
    ({"material": {"category": "cheese"}}, "material.category"),
    ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"name": "../../etc/passwd"}, "name: String should match pattern"),
    ({"description": "a\x00b"}, "control characters"),
])
def test_bad_metadata_is_one_clear_line(bad, words):
    with pytest.raises(SampleMetadataError) as info:
        parse_sample({**TI64, **bad})
    message = str(info.value)
    assert words in message and "\n" not in message


def test_yaml_files_are_untrusted(tmp_path):
    lib = SampleLibrary(tmp_path)
    (tmp_path / "ti64-07.yml").write_text("name: ti64-07\nmaterial: {category: alloy}\n")
    assert lib.get("ti64-07").material.category == "alloy"
    (tmp_path / "evil.yml").write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(SampleMetadataError, match="evil.yml is not valid YAML"):
        lib.get("evil")
    with pytest.raises(SampleMetadataError, match="must match"):
        lib.get("../ti64-07")
    (tmp_path / "big.yml").write_text("name: big\ndescription: " + "x" * 300_000 + "\n")
    with pytest.raises(SampleMetadataError, match="more than"):
        load_sample_file(tmp_path / "big.yml")
    (tmp_path / "other.yml").write_text("name: ti64-07\n")
    with pytest.raises(SampleMetadataError, match="describes sample 'ti64-07', not 'other'"):
        lib.get("other")


def test_where_criteria_parse_to_tiled_queries():
    assert parse_where("sample.conditions.temperature.si_value>=500") == (
        "sample.conditions.temperature.si_value", ">=", 500)
    assert parse_where("sample.material.category=alloy") == ("sample.material.category", "==", "alloy")
    assert where_query("a.b", ">", 1).operator == "gt"
    for bad in ("no operator", "a;b=1", "=1"):
        with pytest.raises(QueryError):
            parse_where(bad)


def test_reprocess_command_refuses_a_bad_where_before_connecting(capsys):
    from bluesky_tomo_hpc.cli.main import main

    code = main(["reprocess", "http://127.0.0.1:9/api/v1", "--where", "sample;name=x"])
    assert code == 2 and "invalid --where" in capsys.readouterr().err


# -- with a RunEngine, the simulated beamline and a real Tiled --------------------------------
@pytest.fixture
def pipeline(module_tiled_server, request):
    server = module_tiled_server
    settings = Settings(data_dir=server.root / request.node.name, jobs={"executor": "none"})
    pipe = TomoPipeline(settings, server.client())
    yield pipe
    pipe.close()


def test_bad_sample_refused_before_the_scan_and_nothing_written(RE, pipeline):
    bl = make_sim_beamline(pipeline.data_dir / "raw", shape=SHAPE)
    pipeline.subscribe(RE)
    install_sample_validator(RE)
    starts = []
    RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
    bad = {**TI64, "conditions": {"temperature": "450 kg"}}
    before = len(pipeline.raw)  # the module's server may hold other tests' runs
    with pytest.raises(SampleMetadataError, match="conditions.temperature: '450.0 kg' is not a temperature"):
        RE(tomo_scan(bl.detector, bl.stage, md={"sample": bad}, **SCAN))
    with pytest.raises(SampleMetadataError, match="name: String should match"):
        RE(with_sample(tomo_scan(bl.detector, bl.stage, **SCAN), {"name": "bad name"}))
    RE.md["sample"] = {"name": "x", "conditions": {"pressure": "2 K"}}
    with pytest.raises(SampleMetadataError, match="not a pressure"):
        RE(tomo_scan(bl.detector, bl.stage, **SCAN))
    assert starts == [] and RE.state == "idle"
    assert pipeline.wait(60) and len(pipeline.raw) == before
    del RE.md["sample"]
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, **SCAN))  # the next good scan runs
    assert pipeline.wait(120) and pipeline.service.outcomes[uid].ok


def test_sample_travels_to_tiled_raw_and_processed_and_is_searchable(RE, pipeline, tmp_path):
    from tiled.queries import Key

    bl = make_sim_beamline(pipeline.data_dir / "raw", shape=SHAPE)
    pipeline.subscribe(RE)
    install_sample_validator(RE, library=tmp_path)
    (tmp_path / "ti64-07.yml").write_text(
        "name: ti64-07\nmaterial: {category: alloy, composition: Ti-6Al-4V}\n"
        "conditions: {temperature: 450 degC, atmosphere: Ar}\n")
    (hot,) = RE(tomo_scan(bl.detector, bl.stage, **SCAN), sample="ti64-07")  # from the YAML file
    (cold,) = RE(tomo_scan(bl.detector, bl.stage, md={"sample": {**TI64, "name": "ti64-08",
                                                                 "conditions": {"temperature": "300 K"}}},
                           **SCAN))
    RE.preprocessors.clear()  # as before this feature: a bare string, stored as is
    (legacy,) = RE(tomo_scan(bl.detector, bl.stage, md={"sample": "ti64-07"}, **SCAN))
    assert pipeline.wait(180)
    start = pipeline.raw[hot].start
    assert pipeline.raw[legacy].start["sample"] == "ti64-07"
    assert start["sample"]["conditions"]["temperature"]["si_value"] == pytest.approx(723.15)
    assert start["sample"]["material"]["composition"] == "Ti-6Al-4V"
    (node,) = find_reconstructions(pipeline.processed, raw_uid=hot, kind="full")
    assert node.metadata["sample"]["name"] == "ti64-07"
    (preview,) = find_reconstructions(pipeline.processed, raw_uid=hot, kind="preview")
    assert preview.metadata["raw_uid"] == hot
    # Tiled queries, on raw and processed alike
    hotter = pipeline.raw.search(Key("sample.conditions.temperature.si_value") > 500)
    assert list(hotter) == [hot]
    assert set(pipeline.raw.search(Key("sample.material.category") == "alloy")) == {hot, cold}
    assert {n.metadata["raw_uid"] for n in pipeline.processed.search(Key("sample.name") == "ti64-08").values()
            } == {cold}
    # reprocess queries: the name matches the schema's dict and a legacy bare string
    by_name = {uid for uid, _, _ in tomography_runs(pipeline.raw, RunQuery(sample="ti64-07"))}
    assert by_name == {hot, legacy}
    where = (parse_where("sample.conditions.temperature.si_value<400"),)
    assert [uid for uid, _, _ in tomography_runs(pipeline.raw, RunQuery(where=where))] == [cold]
