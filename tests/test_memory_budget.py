"""The one memory budget: defaults from the machine, slabs from the budget, clear refusals."""

from __future__ import annotations

import pytest

from bluesky_tomo_hpc.engine.memory import (
    DEFAULT_CAP_BYTES,
    DEFAULT_FLOOR_BYTES,
    MemoryBudgetError,
    budget_bytes,
    default_budget_bytes,
    rows_per_slab,
)


def test_default_budget_is_bounded() -> None:
    assert DEFAULT_FLOOR_BYTES <= default_budget_bytes() <= DEFAULT_CAP_BYTES
    assert budget_bytes(None) == default_budget_bytes()
    assert budget_bytes(256) == 256 * 2**20


def test_rows_per_slab_and_refusal_names_minimum() -> None:
    assert rows_per_slab(100 * 2**20, 2**20) == 100
    assert rows_per_slab(100 * 2**20, 2**20, fixed_bytes=40 * 2**20) == 60
    with pytest.raises(MemoryBudgetError, match="at least 50 MiB"):
        rows_per_slab(10 * 2**20, 25 * 2**20, minimum_rows=2, what="row slab")
    with pytest.raises(MemoryBudgetError):
        budget_bytes(-1)


def test_cli_config_states_the_effective_budget_and_its_source(capsys, monkeypatch) -> None:
    import yaml

    from bluesky_tomo_hpc.cli.main import main as cli_main

    monkeypatch.delenv("BLUESKY_TOMO_HPC_CONFIG", raising=False)
    monkeypatch.delenv("BLUESKY_TOMO_HPC__MEMORY_BUDGET_MB", raising=False)
    assert cli_main(["config"]) == 0
    stated = yaml.safe_load(capsys.readouterr().out)["effective"]["memory_budget"]
    assert stated["bytes"] == default_budget_bytes() and stated["from"].startswith("default: 25% of")
    monkeypatch.setenv("BLUESKY_TOMO_HPC__MEMORY_BUDGET_MB", "512")
    assert cli_main(["config"]) == 0
    stated = yaml.safe_load(capsys.readouterr().out)["effective"]["memory_budget"]
    assert stated == {"bytes": 512 * 2**20, "mib": 512.0, "from": "memory_budget_mb setting (512 MiB)"}
