"""The GPU box's nightly loop around `dvc repro`: the newest code in, the last results in, results out.

`checkout_latest` (a Prefect pull step, prefect.yaml) puts the project folder on the newest commit of
the code branch with the results branch's records (dvc.lock and the git-tracked metrics and plots) on
top, so `dvc pull` restores what the last night produced and only what changed since reruns.
`publish_results` commits those records to the results branch (parents: the tip the run started from
and the code commit) and pushes it. The pipeline flow pushes DVC outputs first, so a failed git push
leaves only DVC objects behind, which are harmless.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from skincancer.review.metrics_diff import changes

log = logging.getLogger(__name__)

BASE_REF = "refs/skincancer/results-base"  # the results tip this run's records came from
LOCK = "dvc.lock"


class NightlyError(RuntimeError):
    """The box cannot take in code or publish results; the message says what to do."""


def git(*args: str, cwd: Path = Path("."), env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, ["git", *args], result.stdout, result.stderr)
    return result.stdout.strip()


def last_line(error: subprocess.CalledProcessError) -> str:
    """git's own reason, for an error message that says what failed."""
    lines = [line for line in (error.stderr or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit {error.returncode}"


def records(root: Path = Path(".")) -> list[str]:
    """dvc.lock and every `cache: false` output of dvc.yaml: what git, not DVC, carries from run to run."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    tracked = [LOCK]
    for stage in stages.values():
        for section in ("outs", "metrics", "plots"):
            for out in stage.get(section, []):
                if isinstance(out, dict):
                    tracked += [path for path, options in out.items() if options and options.get("cache") is False]
    return tracked


def remote_url(remote: str, root: Path) -> str:
    """The remote's URL, for messages; a missing remote is itself the error."""
    try:
        return git("remote", "get-url", remote, cwd=root)
    except subprocess.CalledProcessError:
        raise NightlyError(
            f"{root}: no git remote '{remote}'; add the project's code remote (`git remote add {remote} <url>`) "
            "or set the pull step's `remote`"
        ) from None


def _fetch(remote: str, branch: str, root: Path, required: bool) -> str | None:
    """The remote branch's tip, fetched; None if the branch does not exist yet and need not."""
    url = remote_url(remote, root)
    try:
        listed = git("ls-remote", "--heads", remote, branch, cwd=root)
    except subprocess.CalledProcessError as error:
        raise NightlyError(
            f"cannot reach git remote '{remote}' ({url}): {last_line(error)}; check the URL, the network and "
            "the box's git credentials"
        ) from None
    if not listed:
        if required:
            raise NightlyError(f"git remote '{remote}' ({url}) has no branch '{branch}'; push it, or set the pull step's `branch`")
        return None
    git("fetch", "-q", remote, f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}", cwd=root)
    return git("rev-parse", f"refs/remotes/{remote}/{branch}", cwd=root)


def _changed_besides(allowed: Sequence[str], root: Path) -> list[str]:
    paths = git("diff", "--name-only", "HEAD", cwd=root).splitlines()  # staged or not; untracked files stay
    return [path for path in paths if not any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)]


def _read_files(paths: Sequence[str], root: Path) -> dict[str, bytes]:
    return {path: (root / path).read_bytes() for path in paths if (root / path).is_file()}


def snapshot_records(root: Path = Path(".")) -> dict[str, bytes]:
    """The records' bytes now: what git, not the DVC cache, can give back after a failed stage."""
    return _read_files(_record_files(records(root), root), root)


def _exists_at(commit: str, path: str, root: Path) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], cwd=root, capture_output=True).returncode == 0


def _record_files(paths: Sequence[str], root: Path) -> list[str]:
    """Records as files: a declared folder (reports/plots) stands for the files in it."""
    files = []
    for path in paths:
        target = root / path
        files += sorted(str(p.relative_to(root)) for p in target.rglob("*") if p.is_file()) if target.is_dir() else [path]
    return files


def take_records(commit: str, root: Path = Path(".")) -> list[str]:
    """The records as `commit` holds them, written over the work tree (HEAD stays): what makes `dvc pull`
    restore that commit's outputs and `dvc repro` rerun only what differs from it."""
    present = [path for path in records(root) if _exists_at(commit, path, root)]
    if not present:
        raise NightlyError(f"{commit} holds none of {', '.join(records(root))}: it is not a published result")
    git("checkout", "-q", commit, "--", *present, cwd=root)
    git("reset", "-q", "--", *present, cwd=root)  # in the work tree only: the index stays HEAD's
    return present


def checkout_latest(remote: str = "origin", branch: str = "main", results_branch: str = "results",
                    directory: str = ".") -> dict[str, str]:
    """Prefect pull step: the newest `branch` of `remote` checked out (detached) in `directory`, with the
    records of `results_branch`'s tip on top (or this folder's own, before the first publish).

    Refuses a work tree with changes other than the records: those would be silently overwritten."""
    root = Path(directory).resolve()
    os.chdir(root)
    paths = records(root)
    dirty = _changed_besides(paths, root)
    if dirty:
        raise NightlyError(
            f"{root} has uncommitted changes ({', '.join(dirty[:5])}): the nightly run checks out '{branch}' "
            "over the work tree; commit and push them, or `git stash` them, on the box"
        )
    code = _fetch(remote, branch, root, required=True)
    results = _fetch(remote, results_branch, root, required=False)
    carried = snapshot_records(root) if results is None else {}
    git("checkout", "-q", "-f", "--detach", code, cwd=root)
    if results is not None:
        take_records(results, root)
        git("update-ref", BASE_REF, results, cwd=root)
    else:
        for path, data in carried.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
        subprocess.run(["git", "update-ref", "-d", BASE_REF], cwd=root, capture_output=True)
    log.info("checked out %s@%s (%s); records from %s", branch, code[:12], git("log", "-1", "--format=%s", code, cwd=root),
             f"{results_branch}@{results[:12]}" if results else "this folder (no results branch yet)")
    return {"directory": str(root), "commit": code}


def commit_message(code: str, before: dict | None, after: dict | None, ran: Sequence[str]) -> str:
    """Subject: the code commit and test ROC AUC (with its change); body: stages run and every changed metric."""
    test_auc = (after or {}).get("test", {}).get("roc_auc")
    old_auc = (before or {}).get("test", {}).get("roc_auc")
    headline = "" if test_auc is None else f", test ROC AUC {test_auc:.4f}" + (
        f" ({test_auc - old_auc:+.4f})" if isinstance(old_auc, int | float) else " (first run)")
    lines = [f"nightly results for {code[:12]}{headline}", "", f"stages run: {', '.join(ran) or 'none'}"]
    moved = [change for change in changes(before, after) if change.old != change.new] if after else []
    if moved:
        lines += ["", "metrics changed (old -> new):"]
        lines += [f"  {c.name}: {c.old} -> {c.new}" + (f" ({c.delta:+.4g})" if c.delta is not None else "") for c in moved]
    return "\n".join(lines) + "\n"


def publish_results(remote: str, results_branch: str, message: str, root: Path = Path(".")) -> str | None:
    """Commit the records to `results_branch` on top of the tip this run started from and push it; the
    new commit's sha, or None when the records are what that tip already holds."""
    root = root.resolve()
    code = git("rev-parse", "HEAD", cwd=root)
    base = subprocess.run(["git", "rev-parse", "-q", "--verify", BASE_REF], cwd=root, capture_output=True, text=True)
    base_sha = base.stdout.strip() if base.returncode == 0 else None
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(scratch) / "index")}
        git("read-tree", code, cwd=root, env=env)
        tracked = records(root)
        for path in tracked:
            git("rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", path, cwd=root, env=env)
        files = [path for path in _record_files(tracked, root) if (root / path).is_file()]
        git("update-index", "--add", "--", *files, cwd=root, env=env)
        tree = git("write-tree", cwd=root, env=env)
    if base_sha is not None and git("rev-parse", f"{base_sha}^{{tree}}", cwd=root) == tree:
        log.info("results unchanged since %s@%s: nothing to publish", results_branch, base_sha[:12])
        return None
    parents = [arg for sha in (base_sha, code) if sha for arg in ("-p", sha)]
    commit = subprocess.run(["git", "commit-tree", tree, *parents, "-F", "-"], cwd=root, input=message,
                            capture_output=True, text=True, check=True).stdout.strip()
    try:
        git("push", "-q", remote, f"{commit}:refs/heads/{results_branch}", cwd=root)
    except subprocess.CalledProcessError as error:
        moved = "non-fast-forward" in error.stderr or "fetch first" in error.stderr or "rejected" in error.stderr
        why = (f"'{results_branch}' moved on {remote} since this run started from "
               f"{base_sha[:12] if base_sha else 'no results branch'}; the DVC outputs are pushed, so rerun the "
               "deployment to build on the new tip (nothing is force-pushed)") if moved else (
               f"{last_line(error)}; check the remote's URL and the box's push rights, then rerun")
        raise NightlyError(f"git push of {results_branch} to '{remote}' ({remote_url(remote, root)}) failed: {why}") from None
    git("update-ref", BASE_REF, commit, cwd=root)
    if subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=root, capture_output=True).returncode != 0:
        git("reset", "-q", commit, cwd=root)  # a detached HEAD moves onto what was published: `git status` is clean
    log.info("published %s@%s to %s", results_branch, commit[:12], remote)
    return commit
