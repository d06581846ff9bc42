"""flows/_stage.run_stage: what every `python -m flows.<stage>` does around its flow."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from flows._stage import run_stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def heartbeat_seen(monkeypatch) -> list:
    monkeypatch.setenv("SKINCANCER_PARAMS", str(ROOT / "params.yaml"))
    return []


def test_stage_flows_send_no_heartbeats_by_default(heartbeat_seen):
    """The heartbeat thread would hold each stage's exit up to 1 s; a dead stage already fails dvc repro."""
    run_stage("fetch", lambda params: heartbeat_seen.append(PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()))
    assert heartbeat_seen == [None]


def test_a_heartbeat_frequency_the_user_set_is_kept(heartbeat_seen):
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
        run_stage("fetch", lambda params: heartbeat_seen.append(PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()))
    assert heartbeat_seen == [60]


def test_stages_allocate_arrow_memory_with_jemalloc(heartbeat_seen):
    """mimalloc, Arrow's default, keeps freed table memory: split's peak grew 1.35x from 2k to 33k images."""
    import pyarrow

    run_stage("fetch", lambda params: heartbeat_seen.append(pyarrow.default_memory_pool().backend_name))
    assert heartbeat_seen == ["jemalloc"]


def test_a_bad_params_file_exits_2_naming_it_before_the_flow(monkeypatch, tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: -1\n")
    monkeypatch.setenv("SKINCANCER_PARAMS", str(bad))
    ran = []
    with pytest.raises(SystemExit) as exit_:
        run_stage("fetch", ran.append)
    assert exit_.value.code == 2 and ran == []
    assert "train.epochs" in capsys.readouterr().err
