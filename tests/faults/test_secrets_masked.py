"""Secrets masked in every output: a Tiled URI with ``user:password@`` and ``?api_key=``, and the
API key in the environment, never reach a message, a log, a JSON answer, a record or a payload."""

from __future__ import annotations

import json
import logging

import pytest

from bluesky_tomo_hpc.cli.main import main

PASSWORD, QUERY_KEY, ENV_KEY = "hunter2pass", "querykey1234", "envsecretkey42"
URI = f"http://alice:{PASSWORD}@127.0.0.1:9/api/v1?api_key={QUERY_KEY}"
SECRETS = (PASSWORD, QUERY_KEY, ENV_KEY, "alice:")


def _clean(text: str) -> None:
    found = [s for s in SECRETS if s in text]
    assert not found, (found, text[-2000:])


@pytest.fixture
def leaky(world, monkeypatch):
    """Settings whose Tiled URI carries a password and a key; the key in the environment too."""
    monkeypatch.setenv("BLUESKY_TOMO_HPC__TILED__URI", URI)
    monkeypatch.setenv("BLUESKY_TOMO_HPC__DATA_DIR", str(world.data))
    monkeypatch.setenv("BLUESKY_TOMO_HPC__JOBS__EXECUTOR", "none")
    monkeypatch.setenv("TILED_API_KEY", ENV_KEY)
    return world


@pytest.mark.parametrize("argv", [
    ["health"], ["health", "--json"], ["config"], ["recover"], ["--debug", "recover"],
    ["reprocess", f"http://bob:{PASSWORD}@127.0.0.1:9/api/v1"],
    ["health", "--tiled-uri", f"http://127.0.0.1:9/api/v1?api_key={QUERY_KEY}"],
], ids=lambda a: " ".join(a)[:30])
def test_commands_print_no_secret(capsys, leaky, argv):
    """health, config, recover (--debug too), reprocess: nothing printed carries the password or a key."""
    try:
        main(list(argv))
    except SystemExit:
        pass
    out = capsys.readouterr()
    _clean(out.out + out.err)
    assert out.out + out.err, "the command printed nothing"


def test_config_still_names_where_secrets_come_from(capsys, leaky):
    """config masks the URI's password but still shows the host and the key's variable name."""
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "http://***@127.0.0.1:9/api/v1?api_key=***" in out and "api_key_env: TILED_API_KEY" in out


def test_log_records_of_the_package_are_masked(leaky, caplog):
    """A log record (message, arguments and traceback) of any package logger: secrets masked."""
    log = logging.getLogger("bluesky_tomo_hpc.sources.some_module")
    try:
        raise ConnectionError(f"cannot reach {URI}")
    except ConnectionError as exc:
        with caplog.at_level(logging.WARNING):
            log.exception("Tiled at %s failed: %s (key %s)", URI, exc, ENV_KEY)
    (record,) = [r for r in caplog.records if r.name.endswith("some_module")]
    _clean(record.getMessage() + (record.exc_text or ""))
    assert "http://***@127.0.0.1:9" in record.getMessage() and "ConnectionError" in record.exc_text


def test_access_log_of_a_server_is_masked(leaky):
    """uvicorn's access log line of a request with ?api_key=: the key masked, the line intact."""
    from bluesky_tomo_hpc.untrusted.secrets_mask import MaskFilter

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", f"/web/?api_key={ENV_KEY}", "1.1", 200), None)
    assert MaskFilter().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "GET /web/?api_key=*** HTTP/1.1" 200'


def test_provenance_record_masks_the_command_line(leaky):
    """A provenance record whose command line and source quote the URI: masked in the record."""
    from bluesky_tomo_hpc.engine.params import ReconParams
    from bluesky_tomo_hpc.results.provenance import CenterChoice, provenance_record

    record = provenance_record(params=ReconParams(), center=CenterChoice(10.0, 1.0, "given"),
                               source={"tiled": URI}, call=["reprocess", URI, "--api-key", ENV_KEY],
                               timings_s={}, shape=(1, 2, 2), rows=(0, 1), voxel_size_um=None)
    _clean(json.dumps(record))


def test_journal_keeps_errors_without_secrets(leaky):
    """A job failing with an error that quotes the URI: the journal's error and events masked."""
    from bluesky_tomo_hpc.batch.job import JobOutputs, ReconJob
    from bluesky_tomo_hpc.engine.params import ReconParams
    from bluesky_tomo_hpc.jobs.journal import Journal

    journal = Journal(leaky.data / "jobs.sqlite")
    job = ReconJob(run_uid="run-1", input_path=str(leaky.data / "in.h5"), params=ReconParams(),
                   outputs=JobOutputs(directory=leaky.data / "out"))
    journal.add(job, "local")
    journal.set_state(job.job_id, "FAILED", detail=f"registering at {URI}", error=f"HTTP 401 from {URI}")
    _clean(json.dumps([journal.get(job.job_id).error, *[str(e) for e in journal.events(job.job_id)]]))
    with open(leaky.data / "jobs.sqlite", "rb") as f:
        _clean(f.read().decode("latin-1"))


def test_web_answers_carry_no_secret(leaky):
    """The web page beside a Tiled URI with a password: whoami, health and errors masked."""
    from starlette.testclient import TestClient

    from bluesky_tomo_hpc.settings import load_settings
    from bluesky_tomo_hpc.web.app import build_web_app
    from bluesky_tomo_hpc.web.server import make_context

    settings = load_settings()
    ctx = make_context(settings, api_key=ENV_KEY, tiled_uri=URI, preview_address="")
    try:
        with TestClient(build_web_app(ctx), base_url="http://127.0.0.1") as http:
            headers = {"Authorization": f"Apikey {ENV_KEY}"}
            answers = [http.get(f"/{p}", headers=headers) for p in ("api/whoami", "api/health", "api/runs")]
            assert answers[2].status_code == 503
            _clean(" ".join(a.text for a in answers))
    finally:
        ctx.close()


def test_scicat_payload_masks_the_tiled_address(leaky):
    """The raw dataset's SciCat payload, whose Tiled address has a password: masked."""
    from bluesky_tomo_hpc.model import ScanEnd, ScanSpec
    from bluesky_tomo_hpc.publishing.scicat import raw_dataset
    from bluesky_tomo_hpc.settings import ScicatSettings

    spec = ScanSpec(run_uid="run-1", frame_shape=(4, 4), dtype="uint16", detector_key="det",
                    metadata={"start": {"time": 0}, "tomo": {"note": f"server {URI}"}})
    payload = raw_dataset(spec, ScanEnd(run_uid="run-1", exit_status="success"), ScicatSettings(),
                          tiled_uri=URI)
    _clean(json.dumps(payload))
