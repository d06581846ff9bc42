"""The model registry: dvc.yaml's `artifacts:` names the model, GTO's git tags give it versions and stages.

A nightly run that publishes a results commit registers it as the next version of every model artifact
dvc.yaml declares (`<name>@v0.1.0` first, then one minor version up per publish; GTO's annotated tags) and
pushes the tag to the same git remote as the results branch. A results commit holds dvc.lock, so the tag
pins the exact DVC outputs: `dvc artifacts get <repo> <name> --rev v0.3.0` (or `--stage prod`, after
`gto assign`) fetches that version's files from the DVC remote. GTO pushes only to `origin`, so the tag is
pushed here with git, to the remote the run publishes to.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from skincancer.ops.nightly import NightlyError, git, last_line, remote_url

FIRST_VERSION = "v0.1.0"  # GTO's own first version is v0.0.1; patch numbers are left to hand-registered fixes


def model_artifacts(root: Path = Path(".")) -> list[str]:
    """The names of dvc.yaml's `artifacts:` of type `model`: what a publish registers a version of."""
    artifacts = yaml.safe_load((root / "dvc.yaml").read_text()).get("artifacts") or {}
    return [name for name, spec in artifacts.items() if (spec or {}).get("type") == "model"]


def _unregistered(remote: str, name: str, commit: str) -> str:
    """What is left after a failed registration, and the commands that finish it by hand."""
    return (f"The results commit {commit[:12]} is published but not registered; once the remote takes tags, run "
            f"`git fetch --tags {remote}`, `gto register {name} {commit} --bump-minor` (`--version {FIRST_VERSION}` "
            f"for the first) and `git push {remote} <the tag it names>`")


def _fetch_versions(remote: str, name: str, commit: str, root: Path) -> None:
    """The remote's version tags of `name`, over any local ones: the next version counts from the registry
    everyone sees, not from this clone's memory."""
    try:
        git("fetch", "-q", remote, f"+refs/tags/{name}@*:refs/tags/{name}@*", cwd=root)
    except subprocess.CalledProcessError as error:
        raise NightlyError(
            f"cannot fetch the version tags of '{name}' from git remote '{remote}' ({remote_url(remote, root)}): "
            f"{last_line(error)}. {_unregistered(remote, name, commit)}"
        ) from None


def _register(name: str, commit: str, message: str, root: Path) -> str:
    """A GTO tag for `commit`: FIRST_VERSION, or one minor version above the newest registered one."""
    from gto import api  # GTO loads pydantic and scmrepo: only when something is registered
    from gto.exceptions import ArtifactNotFound

    try:
        first = api.find_latest_version(str(root), name) is None
    except ArtifactNotFound:  # no tag names it yet
        first = True
    registration = api.register(str(root), name, commit, version=FIRST_VERSION if first else None,
                                bump_minor=not first, message=message)
    return registration.tag


def _push_tag(remote: str, name: str, tag: str, commit: str, root: Path) -> None:
    """Push the tag without force; a refused push removes it here too, so no version exists on the box alone."""
    try:
        git("push", "-q", remote, f"refs/tags/{tag}", cwd=root)
    except subprocess.CalledProcessError as error:
        git("tag", "-d", tag, cwd=root)
        raise NightlyError(
            f"git push of tag {tag} to '{remote}' ({remote_url(remote, root)}) failed: {last_line(error)}. "
            f"{_unregistered(remote, name, commit)}"
        ) from None


def register_version(remote: str, commit: str | None, message: str, root: Path = Path(".")) -> list[str]:
    """Register `commit` (a results commit just pushed to `remote`) as the next version of each model
    artifact and push the tags; the tags. None (nothing was published) registers nothing."""
    if commit is None:
        return []
    root = root.resolve()
    subject = message.partition("\n")[0]
    tags = []
    for name in model_artifacts(root):
        _fetch_versions(remote, name, commit, root)
        tag = _register(name, commit, subject, root)
        _push_tag(remote, name, tag, commit, root)
        tags.append(tag)
    return tags
