"""SciCat through the real pyscicat client, at the HTTP layer (``responses``), with recorded
SciCat answers (tests/fixtures/recorded/scicat.json): SciCat itself cannot run here."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import responses

from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.model import ScanEnd, ScanSpec
from bluesky_tomo_hpc.publishing.scicat import ScicatPublisher
from bluesky_tomo_hpc.publishing.scicat_outbox import ScicatOutbox
from bluesky_tomo_hpc.settings import ScicatSettings
from bluesky_tomo_hpc.sinks.full_volume import ReconOutcome

pytest.importorskip("pyscicat")
REC = json.loads((Path(__file__).parent / "fixtures" / "recorded" / "scicat.json").read_text())
API = "https://scicat.example.org/api/v3"
SAMPLE = {"name": "ti64-07", "id": "ALS-2026-0042", "material": {"category": "alloy"}, "schema_version": 1}


class FakeScicat:
    """SciCat's answers from the recordings; datasets posted are kept, so a GET finds them, and
    ``script`` can put other recorded answers first (a refusal, an outage)."""

    def __init__(self, rsps: responses.RequestsMock):
        self.datasets: dict[str, dict] = {}
        self.datablocks: dict[str, list] = {}
        self.script: dict[tuple[str, str], list[str]] = {}
        self.calls: list[tuple[str, str, dict | None]] = []
        self.legacy_not_found = False
        pattern = re.compile(re.escape(API) + r"/Datasets.*")
        for method in ("GET", "POST"):
            rsps.add_callback(getattr(responses, method), pattern, callback=self)

    @staticmethod
    def _answer(name: str, pid: str = "", echo: dict | None = None):
        rec = REC[name]
        if "text" in rec:
            return rec["status"], {"Content-Type": "text/html"}, rec["text"]
        body = rec["body"]
        if body is None:
            return rec["status"], {}, ""
        if isinstance(body, dict):
            body = json.loads(json.dumps(body).replace("{pid}", pid))
            body = {**body, **(echo or {})}
        return rec["status"], {"Content-Type": "application/json"}, json.dumps(body)

    def __call__(self, request):
        from urllib.parse import unquote, urlparse

        path = unquote(urlparse(request.url).path).removeprefix(urlparse(API).path + "/")
        body = json.loads(request.body) if request.body else None
        self.calls.append((request.method, path, body))
        route = "datablocks" if path.endswith("/origdatablocks") else ("one" if "/" in path else "many")
        queue = self.script.get((request.method, route))
        if queue:
            return self._answer(queue.pop(0))
        if request.method == "POST" and route == "many":
            self.datasets[body["pid"]] = body
            return self._answer("dataset_created", echo=body)
        pid = path.split("/", 1)[1].removesuffix("/origdatablocks")
        if request.method == "POST" and route == "datablocks":
            self.datablocks.setdefault(pid, []).append(body)
            return self._answer("origdatablock_created", echo={**body, "datasetId": pid})
        if route == "datablocks":
            return 200, {"Content-Type": "application/json"}, json.dumps(self.datablocks.get(pid, []))
        if pid in self.datasets:
            return self._answer("dataset_created", echo=self.datasets[pid])
        return self._answer("not_found_v3_legacy" if self.legacy_not_found else "not_found_v4", pid)

    def posts(self, route: str = "Datasets") -> list[dict]:
        return [b for m, p, b in self.calls if m == "POST" and (p == route or p.endswith(route))]


@pytest.fixture
def scicat():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeScicat(rsps)


def _settings(**kw) -> ScicatSettings:
    base = {"uri": API, "pid_prefix": "als832/", "owner_group": "als-8.3.2", "contact_email": "bl832@lbl.gov",
            "creation_location": "/ALS/8.3.2", "retry_delay_s": 0.01}
    return ScicatSettings(**(base | kw))


def _publisher(tmp_path, settings=None) -> ScicatPublisher:
    from pyscicat.client import ScicatClient

    settings = settings or _settings()
    return ScicatPublisher(settings, ScicatOutbox(tmp_path / "jobs.sqlite"),
                           lambda: ScicatClient(API, token="recorded", timeout_seconds=5), start_thread=False)


def _scan(tmp_path, uid="0b6f2a51-4c2e-4f0e-9a3d-1c2b3a4d5e6f"):
    raw = tmp_path / "raw" / "scan_000.h5"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(1000))
    spec = ScanSpec(run_uid=uid, frame_shape=(8, 48), scan_id=7, plan_name="tomo_scan", n_projections=36,
                    raw_files=(str(raw),),
                    metadata={"tomo": {"version": 1, "layout": "streams"}, "sample": SAMPLE,
                              "series": {"id": "heat-1", "index": 0},
                              "start": {"time": 1764387600.0, "plan_name": "tomo_scan", "scan_id": 7}})
    end = ScanEnd(run_uid=uid, exit_status="success", time=1764387660.0)
    result = SimpleNamespace(params=ReconParams(), center=23.5, center_confidence=0.9,
                             volume=np.zeros((8, 48, 48), np.float32))
    outcome = ReconOutcome(uid, ok=True, location="http://127.0.0.1:8000/api/v1/metadata/processed/x",
                           center=23.5, center_confidence=0.9, result=result, spec=spec)
    return spec, end, outcome


def test_raw_and_derived_datasets_linked_with_sample_and_locations(tmp_path, scicat):
    pub = _publisher(tmp_path)
    spec, end, outcome = _scan(tmp_path)
    raw_pid = pub.queue_raw(spec, end, tiled_uri="http://127.0.0.1:8000/api/v1/metadata/raw/" + spec.run_uid)
    derived_pid = pub.queue_derived(outcome)
    items = {i.pid: i.state for i in pub.publish_due()}
    assert set(items.values()) == {"DONE"}, items
    (raw, derived) = scicat.posts("Datasets")
    assert raw["pid"] == raw_pid == "als832/" + spec.run_uid and raw["type"] == "raw"
    assert raw["sampleId"] == "ALS-2026-0042" and raw["scientificMetadata"]["sample"] == SAMPLE
    assert raw["creationLocation"] == "/ALS/8.3.2" and raw["creationTime"] == "2025-11-29T03:40:00Z"
    assert raw["sourceFolder"] == str(tmp_path / "raw")
    assert raw["scientificMetadata"]["tiled"]["raw"].endswith(spec.run_uid)
    assert {"tomography", "alloy", "heat-1"} <= set(raw["keywords"])
    (block,) = scicat.posts("origdatablocks")
    (entry,) = block["dataFileList"]
    assert entry["path"] == "scan_000.h5" and entry["size"] == block["size"] == 1008
    assert derived["pid"] == derived_pid and derived["inputDatasets"] == [raw_pid]
    assert derived["jobParameters"]["center"] == 23.5 and derived["scientificMetadata"]["sample"] == SAMPLE
    assert derived["sourceFolder"] == outcome.location
    assert any(s.startswith("bluesky-tomo-hpc ") or s.startswith("numpy ") for s in derived["usedSoftware"])


@pytest.mark.parametrize("legacy", [False, True])
def test_idempotent_across_replays_and_restarts(tmp_path, scicat, legacy):
    scicat.legacy_not_found = legacy  # SciCat before 4.x: 200 and no body for a missing pid
    spec, end, outcome = _scan(tmp_path)
    pub = _publisher(tmp_path)
    pub.queue_raw(spec, end)
    pub.queue_derived(outcome)
    pub.publish_due()
    pub.queue_raw(spec, end)  # the same scan replayed (reprocess, a restarted worker)
    pub.publish_due()
    (tmp_path / "jobs.sqlite").unlink()  # a restart that lost the outbox: SciCat is asked first
    fresh = _publisher(tmp_path)
    fresh.queue_raw(spec, end)
    fresh.queue_derived(outcome)
    assert {i.state for i in fresh.publish_due()} == {"DONE"}
    assert len(scicat.posts("Datasets")) == 2 and len(scicat.posts("origdatablocks")) == 1


def test_refused_dataset_is_kept_with_scicat_reason_and_can_be_retried(tmp_path, scicat, caplog):
    scicat.script[("POST", "many")] = ["refused"]
    spec, end, outcome = _scan(tmp_path)
    pub = _publisher(tmp_path)
    raw_pid = pub.queue_raw(spec, end)
    derived_pid = pub.queue_derived(outcome)
    pub.publish_due()
    raw = pub.outbox.get(raw_pid)
    assert raw.state == "FAILED" and "contactEmail must be an email" in raw.error
    assert "SciCat refused dataset als832/" in caplog.text
    assert pub.outbox.get(derived_pid).state == "PENDING"  # waits for its raw dataset; not lost
    assert raw.payload["scientificMetadata"]["sample"] == SAMPLE  # everything kept for the retry
    pub.outbox.retry(raw_pid)  # after fixing the cause
    assert {i.state for i in pub.publish_due()} == {"DONE"}
    assert [p["pid"] for p in scicat.posts("Datasets")] == [raw_pid, raw_pid, derived_pid]  # refused, taken
    assert set(scicat.datasets) == {raw_pid, derived_pid}


def test_outage_is_retried_with_a_growing_delay_then_published(tmp_path, scicat):
    scicat.script[("GET", "one")] = ["bad_gateway", "bad_gateway"]
    spec, end, _ = _scan(tmp_path)
    pub = _publisher(tmp_path, _settings(max_retries=3, retry_delay_s=0.2))
    pid = pub.queue_raw(spec, end)
    pub.publish_due()
    first = pub.outbox.get(pid)
    assert first.state == "RETRY_WAIT" and first.attempts == 1 and "JSONDecodeError" in first.error
    assert pub.publish_due() and pub.outbox.get(pid).attempts == 1  # not due yet: not tried
    time.sleep(0.25)
    pub.publish_due()
    second = pub.outbox.get(pid)
    assert second.attempts == 2 and 0.25 < second.next_try - time.time() <= 0.4  # 0.2 s, then 0.4 s
    time.sleep(0.45)
    pub.publish_due()
    assert pub.outbox.get(pid).state == "DONE"


def test_out_of_tries_and_bad_credentials_are_failed_not_dropped(tmp_path, scicat):
    scicat.script[("GET", "one")] = ["unauthorized"]
    spec, end, _ = _scan(tmp_path)
    pub = _publisher(tmp_path, _settings(max_retries=0))
    pid = pub.queue_raw(spec, end)
    pub.publish_due()
    item = pub.outbox.get(pid)
    assert item.state == "FAILED" and "Unauthorized" in item.error
    assert [i.pid for i in pub.outbox.items("FAILED")] == [pid]


def test_pipeline_publishes_each_scan_and_reconstruction(RE, tmp_path, scicat, monkeypatch):
    from bluesky_tomo_hpc.live.session import TomoPipeline
    from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer
    from bluesky_tomo_hpc.settings import Settings
    from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
    from bluesky_tomo_hpc.sim.plans import tomo_scan

    monkeypatch.setenv("SCICAT_TOKEN", "recorded")
    settings = Settings(data_dir=tmp_path / "data", jobs={"executor": "none"},
                        scicat=_settings().model_dump() | {"retry_delay_s": 0.05})
    server = EmbeddedTiledServer(tmp_path / "tiled", readable_storage=[tmp_path])
    pipe = TomoPipeline(settings, server.client(), server=server)
    try:
        bl = make_sim_beamline(tmp_path / "raw", shape=(8, 48))
        pipe.subscribe(RE)
        (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=36, num_darks=2, num_flats=2,
                              md={"sample": SAMPLE}))
        assert pipe.wait(120)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and {i.state for i in pipe.scicat.outbox.items()} != {"DONE"}:
            time.sleep(0.1)
        states = {i.kind: i.state for i in pipe.scicat.outbox.items()}
        assert states == {"raw": "DONE", "datablock": "DONE", "derived": "DONE"}, states
        raw, derived = scicat.posts("Datasets")
        assert raw["pid"] == f"als832/{uid}" and raw["scientificMetadata"]["sample"]["name"] == "ti64-07"
        assert derived["inputDatasets"] == [raw["pid"]]
        assert scicat.posts("origdatablocks")[0]["dataFileList"]  # the HDF5 file the detector wrote
    finally:
        pipe.close()
