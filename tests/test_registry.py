"""The model registry's git side on real repositories: a bare remote, the box's clone publishing results
commits, GTO's tags for versions (the end-to-end fetch with `dvc artifacts get` is in test_nightly_box.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from git_remotes import origin_dev_and_box
from project_copy import BIN, ROOT

from skincancer.core import paths
from skincancer.core.model_card import card_path_for, ood_path_for
from skincancer.ops.nightly import NightlyError, checkout_latest, git, publish_results
from skincancer.ops.registry import FIRST_VERSION, model_artifacts, register_version

NAME = "skincancer-classifier"
DVC_YAML = f"""stages:
  evaluate:
    cmd: python evaluate.py
    outs:
      - models/model.keras
    metrics:
      - metrics.json:
          cache: false
artifacts:
  {NAME}:
    path: models
    type: model
"""


@pytest.fixture
def origin_and_box(tmp_path, monkeypatch):
    """A bare `origin` holding main (a dvc.yaml declaring the model artifact) and the box's clone on it."""
    origin, dev, box = origin_dev_and_box(tmp_path, monkeypatch, {"dvc.yaml": DVC_YAML, "dvc.lock": "schema: '2.0'\n"})
    checkout_latest(directory=str(box))
    return origin, dev, box


def publish(box: Path, auc: float) -> str | None:
    """A night's records committed to `results` and pushed, as the pipeline flow's git-publish task does."""
    (box / "dvc.lock").write_text(f"auc: {auc}\n")
    (box / "metrics.json").write_text(f'{{"test": {{"roc_auc": {auc}}}}}\n')
    return publish_results("origin", "results", f"nightly results, test ROC AUC {auc}\n\nstages run: evaluate\n", box)


def tags(repo: Path) -> list[str]:
    return git("tag", "-l", cwd=repo).splitlines()


def test_each_publish_registers_the_next_minor_version_on_its_results_commit_and_pushes_it(origin_and_box):
    origin, _, box = origin_and_box
    first = publish(box, 0.8)
    assert register_version("origin", first, "nightly results, test ROC AUC 0.8\n\nbody\n", box) == [f"{NAME}@v0.1.0"]
    second = publish(box, 0.9)
    assert register_version("origin", second, "nightly results, test ROC AUC 0.9\n", box) == [f"{NAME}@v0.2.0"]
    assert tags(origin) == [f"{NAME}@v0.1.0", f"{NAME}@v0.2.0"]
    for tag, commit in ((f"{NAME}@v0.1.0", first), (f"{NAME}@v0.2.0", second)):
        assert git("cat-file", "-t", tag, cwd=origin) == "tag"  # annotated, as GTO and `dvc artifacts get` read them
        assert git("rev-parse", f"{tag}^{{commit}}", cwd=origin) == commit
    assert git("tag", "-l", "--format=%(contents:subject)", f"{NAME}@v0.1.0", cwd=origin) == "nightly results, test ROC AUC 0.8"


def test_the_next_version_counts_from_the_remotes_tags_not_the_boxs(origin_and_box):
    """A version registered elsewhere (a developer's major release by hand) is one the box has never seen."""
    origin, dev, box = origin_and_box
    subprocess.run([str(BIN / "gto"), "register", NAME, "HEAD", "--version", "v1.0.0"], cwd=dev, check=True,
                   capture_output=True)
    git("push", "-q", "origin", f"refs/tags/{NAME}@v1.0.0", cwd=dev)
    assert tags(box) == []
    assert register_version("origin", publish(box, 0.8), "night\n", box) == [f"{NAME}@v1.1.0"]
    assert tags(origin) == [f"{NAME}@v1.0.0", f"{NAME}@v1.1.0"]


def test_nothing_published_registers_nothing(origin_and_box):
    origin, _, box = origin_and_box
    register_version("origin", publish(box, 0.8), "night 1\n", box)
    checkout_latest(directory=str(box))
    unchanged = publish(box, 0.8)
    assert unchanged is None
    assert register_version("origin", unchanged, "night 2\n", box) == []
    assert tags(origin) == tags(box) == [f"{NAME}@v0.1.0"]


def test_a_refused_tag_push_names_the_tag_and_the_fix_and_leaves_no_version_anywhere(origin_and_box):
    origin, _, box = origin_and_box
    hook = origin / "hooks/pre-receive"
    hook.write_text("#!/bin/sh\nif grep -q ' refs/tags/'; then echo 'tags are locked' >&2; exit 1; fi\n")
    hook.chmod(0o755)
    commit = publish(box, 0.8)
    assert git("rev-parse", "refs/heads/results", cwd=origin) == commit  # the branch itself was taken
    with pytest.raises(NightlyError) as refused:
        register_version("origin", commit, "night\n", box)
    message = str(refused.value)
    assert f"git push of tag {NAME}@{FIRST_VERSION} to 'origin' ({origin})" in message
    assert f"results commit {commit[:12]} is published but not registered" in message
    assert f"`gto register {NAME} {commit} --bump-minor` (`--version {FIRST_VERSION}` for the first)" in message
    assert tags(origin) == tags(box) == []  # no version the box alone knows, to count the next one from

    # what the message says, once the remote takes tags again
    hook.unlink()
    git("fetch", "-q", "--tags", "origin", cwd=box)
    subprocess.run([str(BIN / "gto"), "register", NAME, commit, "--version", FIRST_VERSION], cwd=box, check=True,
                   capture_output=True)
    git("push", "-q", "origin", f"{NAME}@{FIRST_VERSION}", cwd=box)
    assert git("rev-parse", f"{NAME}@{FIRST_VERSION}^{{commit}}", cwd=origin) == commit


def test_an_unreachable_remote_names_itself_and_registers_nothing(origin_and_box, tmp_path):
    _, _, box = origin_and_box
    commit = publish(box, 0.8)
    gone = tmp_path / "moved.git"
    git("remote", "set-url", "origin", str(gone), cwd=box)
    with pytest.raises(NightlyError, match=rf"cannot fetch the version tags of '{NAME}' from git remote 'origin' "
                                           rf"\({gone}\): .*results commit {commit[:12]} is published but not registered"):
        register_version("origin", commit, "night\n", box)
    assert tags(box) == []


def test_a_project_without_a_model_artifact_registers_nothing(origin_and_box):
    origin, _, box = origin_and_box
    (box / "dvc.yaml").write_text(yaml.safe_dump({"stages": yaml.safe_load(DVC_YAML)["stages"]}))
    assert model_artifacts(box) == []
    assert register_version("origin", publish(box, 0.8), "night\n", box) == []
    assert tags(origin) == []


def test_the_projects_model_artifact_is_the_folder_predict_reads():
    """`dvc artifacts get` fetches one path: the model and the card and OOD fit beside it must be under it."""
    assert model_artifacts(ROOT) == [NAME]
    folder = Path(yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"][NAME]["path"])
    card = card_path_for(paths.MODEL)
    for needed in (paths.MODEL, card, ood_path_for(card), paths.FOLDS_DIR):
        assert needed.is_relative_to(folder), f"dvc.yaml's artifact {NAME} ({folder}) leaves out {needed}"
