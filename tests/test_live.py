"""skincancer.train.live: DVCLive's record of training, where DVCLive itself cannot start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from skincancer.train.live import LiveNeedsACommit, open_live


def test_a_git_repository_without_a_commit_gets_an_error_that_says_to_commit(tmp_path, monkeypatch):
    """DVCLive reads the repository's HEAD when it starts: `git init` with no commit yet fails inside it."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LiveNeedsACommit, match=r"models/dvclive: .*commit once \(`git add -A && git commit`\)"):
        open_live(Path("models/dvclive"))
