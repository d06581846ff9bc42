"""flows/_stage.run_stage: what every `python -m flows.<stage>` does around its flow."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from flows._stage import run_stage
from skincancer.core import paths

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


def files(root: Path) -> dict[str, str]:
    """Every file under root, hidden ones (what is set aside or half-written) included."""
    return {path.relative_to(root).as_posix(): path.read_text() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture
def evaluated(tmp_path, monkeypatch, prefect_api) -> Path:
    """A project folder with evaluate's inputs and its last recorded outputs (a cross-validated run's plots),
    as the working directory; a real Prefect API, so no stage starts its own."""
    monkeypatch.setenv("SKINCANCER_PARAMS", str(ROOT / "params.yaml"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    for path in (paths.MODEL, paths.TRAIN_CARD, paths.SHARDS_MANIFEST, paths.CARD, paths.METRICS,
                 paths.REPORTS / "plots" / "roc_oof.csv"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(f"{path} as recorded\n")
    monkeypatch.chdir(tmp_path)
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        yield tmp_path


def evaluate_writing(plot: str, fail: bool):
    """A stand-in for the evaluate flow: it writes its plot, card and metrics, then fails or not."""
    def flow(params) -> None:
        (paths.REPORTS / "plots").mkdir(parents=True, exist_ok=True)
        (paths.REPORTS / "plots" / plot).write_text("fpr,tpr\n")
        paths.CARD.write_text("{}\n")
        paths.METRICS.write_text("{}\n")
        if fail:
            raise RuntimeError("evaluate failed")
    return flow


def test_a_failing_stage_puts_back_the_outputs_dvc_left_to_it(evaluated):
    """`persist: true` outputs (dvc.yaml) are not removed by DVC: a failed run must leave them as they were."""
    before = files(evaluated)
    with pytest.raises(RuntimeError, match="evaluate failed"):
        run_stage("evaluate", evaluate_writing("roc_val.csv", fail=True))
    assert files(evaluated) == before


def test_a_stage_that_succeeds_leaves_no_stale_output_dvc_left_to_it(evaluated):
    """A single-model run after a cross-validated one: roc_oof.csv is not this run's, so it must go."""
    run_stage("evaluate", evaluate_writing("roc_val.csv", fail=False))
    assert sorted(path.name for path in (evaluated / "reports" / "plots").iterdir()) == ["roc_val.csv"]
    assert not [name for name in files(evaluated) if "/." in f"/{name}"]  # nothing set aside is left
