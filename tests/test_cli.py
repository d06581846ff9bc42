"""The `skincancer` command: sample, check-params, metrics."""

import json

from typer.testing import CliRunner

from skincancer.cli import app

runner = CliRunner()


def test_sample_writes_both_archive_layouts(tmp_path):
    result = runner.invoke(app, ["sample", str(tmp_path / "out"), "--n-images", "40", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out/isic2017-udacity/train.zip").is_file()
    assert (tmp_path / "out/isic2020/ISIC_2020_Training_GroundTruth.csv").is_file()
    assert "isic2020:" in result.output


def test_check_params_names_the_bad_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("split:\n  seeed: 1\n")
    result = runner.invoke(app, ["check-params", str(path)])
    assert result.exit_code == 2
    assert "split.seeed: unknown key" in result.output


def test_metrics_shows_val_and_test_with_their_intervals(tmp_path):
    path = tmp_path / "metrics.json"
    val = {"roc_auc": 0.95, "roc_auc_ci_low": 0.9, "roc_auc_ci_high": 0.99, "n": 60}
    test = {"roc_auc": 0.91, "roc_auc_ci_low": 0.85, "roc_auc_ci_high": 0.96, "sensitivity": None, "n": 120}
    path.write_text(json.dumps({"threshold": 0.25, "val": val, "test": test}))
    result = runner.invoke(app, ["metrics", str(path)])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "threshold (chosen on val): 0.2500"
    assert lines[1].split() == ["val", "test"]
    assert lines[2].split() == ["roc_auc", "0.9500", "(0.9000-0.9900)", "0.9100", "(0.8500-0.9600)"]
    assert next(line for line in lines if line.startswith("sensitivity")).split() == ["sensitivity", "-", "-"]  # absent, null
    assert next(line for line in lines if line.startswith("n ")).split() == ["n", "60", "120"]
    missing = runner.invoke(app, ["metrics", str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "dvc repro" in missing.output


def test_top_level_help_teaches_the_workflow_and_the_exit_codes():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for step in ("skincancer run", "skincancer metrics", "skincancer predict", "skincancer export", "skincancer diff-report",
                 "dvc repro"):
        assert step in result.output, step
    assert "Exit codes: 0" in result.output


def test_run_refuses_an_unknown_stage_naming_the_known_ones(tmp_path, monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    result = runner.invoke(app, ["run", "trian"])
    assert result.exit_code == 2 and "unknown stage(s) ['trian']" in result.output and "'train'" in result.output
    monkeypatch.chdir(tmp_path)
    elsewhere = runner.invoke(app, ["run"])
    assert elsewhere.exit_code == 2 and "run from the project root" in elsewhere.output


def test_diff_report_without_metrics_says_to_run_the_pipeline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["diff-report", "--base", "HEAD"])
    assert result.exit_code == 2 and "run the pipeline first" in result.output


def test_diff_report_against_an_unknown_revision_names_it(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / "metrics.json").write_text(json.dumps({"threshold": 0.5, "val": {}, "test": {}}))
    result = runner.invoke(app, ["diff-report", "--base", "no-such-branch"])
    assert result.exit_code == 2 and "'no-such-branch'" in result.output and "--base" in result.output
