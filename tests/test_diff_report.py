"""diff_report's paired comparison: a real difference is told from noise on the test images both models scored."""

import logging

import numpy as np
import pandas as pd
import pytest

from skincancer.core import paths
from skincancer.review.diff_report import paired_markdown, read_predictions, shared_test_images

PATIENTS, PER_PATIENT = 120, 3


def predictions(probability: np.ndarray, label: np.ndarray, split: str = "test", prefix: str = "ISIC_") -> pd.DataFrame:
    n = len(label)
    return pd.DataFrame({
        "image_id": [f"{prefix}{i:07d}" for i in range(n)],
        "split": split,
        "label": label,
        "probability": probability.round(6),
        "group": [f"patient{i // PER_PATIENT}" for i in range(n)],
    })


def stated_interval(text: str) -> tuple[float, float]:
    """The interval as the report words it: '95% paired bootstrap CI -0.0123 to +0.0456,'."""
    low, high = text.split("95% paired bootstrap CI ")[1].split(",")[0].split(" to ")
    return float(low), float(high)


@pytest.fixture
def scored_base() -> tuple[pd.DataFrame, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(0)
    label = np.repeat(rng.integers(0, 2, PATIENTS), PER_PATIENT)
    base = predictions(np.clip(0.15 * label + rng.normal(0.4, 0.2, len(label)), 0, 1), label)
    return base, label, rng


def test_a_clearly_better_head_is_a_real_difference(scored_base):
    base, label, rng = scored_base
    head = predictions(np.clip(0.5 * label + rng.normal(0.3, 0.15, len(label)), 0, 1), label)
    text = paired_markdown(base, head, "main")
    assert "The interval excludes 0: this change ranks the test images better than `main`." in text
    low, high = stated_interval(text)
    assert 0 < low < high
    assert f"on the {len(label)} test images both scored" in text and f"resampling {PATIENTS} groups" in text


def test_a_jittered_base_is_not_distinguishable_from_noise(scored_base):
    base, label, rng = scored_base
    head = base.assign(probability=(base["probability"] + rng.normal(0, 0.01, len(label))).round(6))
    text = paired_markdown(base, head, "main")
    assert f"The interval includes 0: not distinguishable from noise on {len(label)} test images in {PATIENTS} groups." in text
    low, high = stated_interval(text)
    assert low < 0 < high


def test_only_test_images_both_scored_with_the_same_label_are_paired(scored_base):
    base, label, _ = scored_base
    val = predictions(np.full(6, 0.5), np.array([0, 1] * 3), split="val", prefix="VAL_")
    head = pd.concat([base.iloc[30:], val])
    relabelled = base.assign(label=np.where(base.index == 40, 1 - base["label"], base["label"]))
    shared = shared_test_images(relabelled, head)
    assert len(shared) == len(base) - 30 - 1
    assert list(shared.columns) == ["image_id", "label", "probability_head", "group", "probability_base"]
    assert ". 30 of this change's test images are left out" in paired_markdown(base.iloc[30:], base, "main")
    assert ". 1 of this change's test images are left out" in paired_markdown(base, relabelled, "main")
    assert "left out" not in paired_markdown(base, base, "main")


def test_sides_sharing_no_test_image_or_without_predictions_say_why(scored_base):
    base, label, _ = scored_base
    other = predictions(base["probability"].to_numpy(), label, prefix="OTHER_")
    assert "share no test image" in paired_markdown(base, other, "main")
    assert "`main` has no reports/predictions.csv" in paired_markdown(None, base, "main")
    assert "this workspace has no reports/predictions.csv" in paired_markdown(base, None, "main")
    benign = base[base["label"] == 0]
    assert "hold one class only" in paired_markdown(benign, benign, "main")


def test_predictions_without_groups_count_one_group_per_image_with_one_warning(tmp_path, caplog):
    (tmp_path / paths.REPORTS).mkdir()
    frame = predictions(np.linspace(0, 1, 9), np.array([0, 1] * 4 + [0])).drop(columns="group")
    frame.to_csv(tmp_path / paths.PREDICTIONS, index=False)
    with caplog.at_level(logging.WARNING, logger="skincancer.review.diff_report"):
        read = read_predictions(None, tmp_path)
    assert (read["group"] == read["image_id"]).all()
    assert caplog.text.count("has no group column") == 1
    assert read_predictions(None, tmp_path / "elsewhere") is None


def test_params_changes_of_a_change_that_moves_no_param_is_empty(tmp_path):
    """The usual pull request changes code, not params: DVC then leaves out its diff's key altogether."""
    import subprocess

    from project_copy import project_env

    from skincancer.review.diff_report import params_changes

    env = project_env(tmp_path)
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=tmp_path, env=env, check=True)
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 2\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: echo\n    params: [train.epochs]\n")
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "base"], cwd=tmp_path, env=env, check=True)
    assert params_changes("HEAD", tmp_path) == []
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 3\n")
    assert params_changes("HEAD", tmp_path) == [("train.epochs", 2, 3)]
