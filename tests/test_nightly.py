"""The nightly loop's git side on real repositories: a bare code remote on disk and the box's clone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from git_remotes import origin_dev_and_box

from skincancer.ops.nightly import (
    BASE_REF,
    NightlyError,
    checkout_latest,
    commit_message,
    git,
    publish_results,
    records,
)

DVC_YAML = """stages:
  evaluate:
    cmd: python evaluate.py
    outs:
      - reports/plots:
          cache: false
      - models/model.keras
    metrics:
      - metrics.json:
          cache: false
"""


@pytest.fixture
def remote_and_box(tmp_path, monkeypatch):
    """A bare `origin` holding main, a developer's clone to push code from, and the box's clone."""
    return origin_dev_and_box(tmp_path, monkeypatch, {"dvc.yaml": DVC_YAML, "params.yaml": "epochs: 1\n",
                                                      "dvc.lock": "schema: '2.0'\n"})


def night(box: Path, lock: str, auc: float) -> None:
    """What `dvc repro` leaves: a new dvc.lock, metrics and a plot."""
    (box / "dvc.lock").write_text(lock)
    (box / "metrics.json").write_text(f'{{"test": {{"roc_auc": {auc}}}}}\n')
    (box / "reports/plots").mkdir(parents=True, exist_ok=True)
    (box / "reports/plots/roc_test.csv").write_text(f"fpr,tpr\n0,{auc}\n")


def push_code(dev: Path, params: str) -> str:
    (dev / "params.yaml").write_text(params)
    git("commit", "-qam", "change params", cwd=dev)
    git("push", "-q", "origin", "HEAD:main", cwd=dev)
    return git("rev-parse", "HEAD", cwd=dev)


def test_records_are_the_lock_and_the_outputs_git_carries(remote_and_box):
    _, _, box = remote_and_box
    assert records(box) == ["dvc.lock", "reports/plots", "metrics.json"]  # not the DVC-cached model


def test_two_nights_publish_fast_forward_and_the_second_starts_from_the_first_results(remote_and_box):
    origin, dev, box = remote_and_box
    checkout_latest(directory=str(box))
    night(box, "night: 1\n", 0.8)
    first = publish_results("origin", "results", commit_message(git("rev-parse", "HEAD", cwd=box), None,
                                                                 {"test": {"roc_auc": 0.8}}, ["train"]), box)
    assert git("rev-parse", "refs/heads/results", cwd=origin) == first
    assert git("status", "--porcelain", cwd=box) == ""  # the box sits on what it published
    assert git("show", f"{first}:metrics.json", cwd=origin) == '{"test": {"roc_auc": 0.8}}'
    assert git("show", f"{first}:reports/plots/roc_test.csv", cwd=origin) == "fpr,tpr\n0,0.8"

    code = push_code(dev, "epochs: 2\n")
    out = checkout_latest(directory=str(box))
    assert out == {"directory": str(box.resolve()), "commit": code}
    assert (box / "params.yaml").read_text() == "epochs: 2\n"  # the new code ...
    assert (box / "dvc.lock").read_text() == "night: 1\n"  # ... with last night's records on top
    assert (box / "metrics.json").read_text() == '{"test": {"roc_auc": 0.8}}\n'
    night(box, "night: 2\n", 0.9)
    second = publish_results("origin", "results", "night 2\n", box)
    parents = git("rev-list", "--parents", "-n", "1", second, cwd=origin).split()[1:]
    assert parents == [first, code]  # fast-forward on results, and the code it ran
    assert git("show", f"{second}:params.yaml", cwd=origin) == "epochs: 2"
    assert git("show", f"{second}:dvc.lock", cwd=origin) == "night: 2"


def test_nothing_new_publishes_nothing(remote_and_box):
    _, _, box = remote_and_box
    checkout_latest(directory=str(box))
    night(box, "night: 1\n", 0.8)
    first = publish_results("origin", "results", "night 1\n", box)
    checkout_latest(directory=str(box))
    assert publish_results("origin", "results", "night 2\n", box) is None
    assert git("rev-parse", "refs/remotes/origin/results", cwd=box) == first


def test_before_the_first_publish_the_box_keeps_its_own_records(remote_and_box):
    _, dev, box = remote_and_box
    checkout_latest(directory=str(box))
    night(box, "local night\n", 0.7)
    push_code(dev, "epochs: 3\n")
    checkout_latest(directory=str(box))
    assert (box / "params.yaml").read_text() == "epochs: 3\n"
    assert (box / "dvc.lock").read_text() == "local night\n"


def test_results_branch_that_moved_meanwhile_is_not_overwritten(remote_and_box):
    origin, dev, box = remote_and_box
    checkout_latest(directory=str(box))
    night(box, "night: 1\n", 0.8)
    publish_results("origin", "results", "night 1\n", box)
    checkout_latest(directory=str(box))
    # someone else publishes meanwhile (another box, a hand-made fix)
    git("fetch", "-q", "origin", "results", cwd=dev)
    git("checkout", "-q", "FETCH_HEAD", cwd=dev)
    (dev / "metrics.json").write_text("{}\n")
    git("commit", "-qam", "elsewhere", cwd=dev)
    git("push", "-q", "origin", "HEAD:results", cwd=dev)
    theirs = git("rev-parse", "HEAD", cwd=dev)
    night(box, "night: 2\n", 0.9)
    with pytest.raises(NightlyError, match=r"'results' moved on origin since this run started from [0-9a-f]{12}; "
                                           r"the DVC outputs are pushed, so rerun the deployment"):
        publish_results("origin", "results", "night 2\n", box)
    assert git("rev-parse", "refs/heads/results", cwd=origin) == theirs  # nothing force-pushed
    assert (box / "dvc.lock").read_text() == "night: 2\n"  # and nothing of this run lost on the box


def test_a_dirty_work_tree_is_refused_and_left_as_it_was(remote_and_box):
    _, dev, box = remote_and_box
    push_code(dev, "epochs: 4\n")
    (box / "params.yaml").write_text("epochs: 9  # a hand edit on the box\n")
    with pytest.raises(NightlyError, match=r"has uncommitted changes \(params.yaml\).*`git stash`"):
        checkout_latest(directory=str(box))
    assert (box / "params.yaml").read_text() == "epochs: 9  # a hand edit on the box\n"


def test_missing_and_unreachable_remotes_say_what_to_do(remote_and_box, tmp_path):
    _, _, box = remote_and_box
    with pytest.raises(NightlyError, match=r"no git remote 'upstream'; add the project's code remote"):
        checkout_latest(remote="upstream", directory=str(box))
    git("remote", "set-url", "origin", str(tmp_path / "gone.git"), cwd=box)
    with pytest.raises(NightlyError, match=r"cannot reach git remote 'origin' \(.*gone.git\): .*check the URL"):
        checkout_latest(directory=str(box))
    with pytest.raises(NightlyError, match=r"git push of results to 'origin' \(.*gone.git\) failed: .*push rights"):
        publish_results("origin", "results", "night\n", box)


def test_a_missing_code_branch_is_named(remote_and_box):
    _, _, box = remote_and_box
    with pytest.raises(NightlyError, match=r"has no branch 'release'; push it"):
        checkout_latest(branch="release", directory=str(box))


def test_commit_message_carries_the_metrics_delta():
    message = commit_message("0123456789abcdef", {"test": {"roc_auc": 0.8, "n": 10}, "calibration": {"method": "platt"}},
                             {"test": {"roc_auc": 0.85, "n": 10}, "calibration": {"method": "none"}}, ["train", "evaluate"])
    subject, _, *body = message.splitlines()
    assert subject == "nightly results for 0123456789ab, test ROC AUC 0.8500 (+0.0500)"
    assert "stages run: train, evaluate" in body
    assert "  test.roc_auc: 0.8 -> 0.85 (+0.05)" in body and "  calibration.method: platt -> none" in body
    assert not any("test.n" in line for line in body)  # unchanged metrics are left out
    assert commit_message("0123456789abcdef", None, {"test": {"roc_auc": 0.7}}, []).startswith(
        "nightly results for 0123456789ab, test ROC AUC 0.7000 (first run)\n\nstages run: none")


def test_publishing_from_a_branch_leaves_the_branch_where_it_is(remote_and_box):
    """`python -m flows.pipeline --publish results` on a developer's own branch: only the results ref moves."""
    _, dev, _ = remote_and_box
    before = git("rev-parse", "HEAD", cwd=dev)
    night(dev, "dev night\n", 0.6)
    published = publish_results("origin", "results", "from a workstation\n", dev)
    assert git("rev-parse", "HEAD", cwd=dev) == before and git("symbolic-ref", "HEAD", cwd=dev) == "refs/heads/main"
    assert subprocess.run(["git", "rev-parse", "-q", "--verify", BASE_REF], cwd=dev, capture_output=True,
                          text=True).stdout.strip() == published
    assert os.path.isfile(dev / "dvc.lock")
