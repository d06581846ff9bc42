"""A code remote on disk for the nightly and registry tests: a bare `origin`, a developer's clone that pushed the
project's files to it, and the box's clone."""

from __future__ import annotations

from pathlib import Path

import pytest

from skincancer.ops.nightly import git


def origin_dev_and_box(root: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> tuple[Path, Path, Path]:
    """`files` (path: text) committed on main by the developer and pushed to origin; the box cloned after. The
    test runs in `root` with a git identity of its own."""
    for key, value in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
                       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(root)
    origin, dev, box = root / "origin.git", root / "dev", root / "box"
    git("init", "-q", "--bare", "-b", "main", str(origin))
    git("clone", "-q", str(origin), str(dev))
    for path, text in files.items():
        (dev / path).write_text(text)
    git("add", "-A", cwd=dev)
    git("commit", "-qm", "code", cwd=dev)
    git("push", "-q", "origin", "HEAD:main", cwd=dev)
    git("clone", "-q", str(origin), str(box))
    return origin, dev, box
