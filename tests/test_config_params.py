"""Settings precedence (defaults < file < environment) and ReconParams identity and validation."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from bluesky_tomo_hpc import ReconParams, RingRemoval
from bluesky_tomo_hpc.cli.main import main as cli_main
from bluesky_tomo_hpc.settings import env_overrides, load_settings


def test_defaults_file_env_precedence(tmp_path):
    cfg = tmp_path / "tomo.yml"
    cfg.write_text(
        "data_dir: /data/tomo\nrecon:\n  filter_name: hann\n  center: 301.5\njobs:\n  executor: slurm\n"
    )
    env = {"BLUESKY_TOMO_HPC__RECON__FILTER_NAME": "parzen", "BLUESKY_TOMO_HPC__JOBS__RANKS": "8"}
    s = load_settings(cfg, environ=env)
    assert str(s.data_dir) == "/data/tomo"
    assert s.recon.filter_name == "parzen"          # environment beats the file
    assert s.recon.center == 301.5                   # the file beats the defaults
    assert s.jobs.executor == "slurm" and s.jobs.ranks == 8
    assert s.preview.enabled is True                 # defaults stay


def test_env_file_variable_and_nested_yaml_values(tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text("full_volume: false\n")
    env = {"BLUESKY_TOMO_HPC_CONFIG": str(cfg),
           "BLUESKY_TOMO_HPC__RECON__RING_REMOVAL": "{method: sort, size: 31}"}
    s = load_settings(environ=env)
    assert s.full_volume is False
    assert s.recon.ring_removal == RingRemoval(method="sort", size=31)
    assert env_overrides({"OTHER": "1"}) == {}


@pytest.mark.parametrize("text, needle", [
    ("recon:\n  filter_nme: hann\n", "filter_nme"),
    ("recon:\n  binning: 0\n", "binning"),
    ("jobs:\n  executor: cloud\n", "executor"),
])
def test_unknown_or_impossible_settings_are_named(tmp_path, text, needle):
    cfg = tmp_path / "bad.yml"
    cfg.write_text(text)
    with pytest.raises(ValidationError, match=needle):
        load_settings(cfg, environ={})


def test_params_hash_is_stable_and_discriminating(tmp_path):
    a, b = ReconParams(), ReconParams()
    assert a == b and hash(a) == hash(b) and a.params_hash == b.params_hash
    assert ReconParams(filter_name="hann").params_hash != a.params_hash
    assert len({a, b, ReconParams(center=10.0)}) == 2
    again = ReconParams.model_validate_json(a.model_dump_json())
    assert again.params_hash == a.params_hash
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"filter_name": "shepp", "rows": [0, 4]}))
    assert ReconParams.from_file(path).rows == (0, 4)
    with pytest.raises(ValidationError, match="rows"):
        ReconParams(rows=(5, 2))
    with pytest.raises(ValidationError, match="extra"):
        ReconParams.model_validate({"centre": 3})
    assert a.with_updates(center=12.5).center == 12.5


def test_cli_config_prints_and_refuses_bad_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BLUESKY_TOMO_HPC_CONFIG", raising=False)
    assert cli_main(["config"]) == 0
    assert "filter_name: shepp" in capsys.readouterr().out
    bad = tmp_path / "bad.yml"
    bad.write_text("recon:\n  nonsense: 1\n")
    assert cli_main(["--config", str(bad), "config"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_readme_configuration_example_is_valid(tmp_path):
    """The YAML in the README's Configuration section loads and builds its executor."""
    import re
    from pathlib import Path

    from bluesky_tomo_hpc.jobs.executors import make_executor

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    cfg = tmp_path / "readme.yml"
    cfg.write_text(block)
    s = load_settings(cfg, environ={})
    assert s.jobs.executor == "slurm" and s.recon.ring_removal.level == 4
    assert make_executor(s.jobs.executor, s.jobs.options).name == "slurm"
