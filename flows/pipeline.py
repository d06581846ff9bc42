"""Prefect flow `skincancer-pipeline`: `dvc repro` as one run (only stale stages run), for the nightly
deployment in prefect.yaml and for `python -m flows.pipeline [TARGET...] [--force] [--no-pull] [--no-push]
[--publish BRANCH]`.

With a default DVC remote the run pulls first (the outputs the last run pushed) and pushes after; with
`publish` it then commits dvc.lock and the git-tracked metrics and plots to that results branch and pushes
it (skincancer.ops.nightly), and registers that commit as the model's next version (skincancer.ops.registry).
Each stage is still DVC's subprocess `python -m flows.<stage>`; they inherit PREFECT_API_URL, so their stage
flow runs land on the same API as this one. Without a configured API this process starts Prefect's temporary
server once and hands its URL down, instead of one server per stage (flows/_prefect_server.shared_api).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from dvc.exceptions import DvcException, ReproductionError
from dvc.repo import Repo
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.exceptions import TerminationSignal

from flows import _prefect_server
from flows._prefect_server import shared_api
from skincancer.core import paths
from skincancer.evaluate.summary import band_summary, split_summary
from skincancer.ops import lifetime
from skincancer.ops.nightly import NightlyError, commit_message, publish_results, snapshot_records
from skincancer.ops.registry import register_version
from skincancer.review.metrics_diff import diff_markdown, flatten


class StageFailed(RuntimeError):
    """A DVC stage failed; DVC recorded nothing for it (dvc.lock and its outputs are as before)."""


def read_metrics(path: Path = paths.METRICS) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


class RemoteFailed(RuntimeError):
    """`dvc pull` or `dvc push` could not use the DVC remote."""


def default_remote() -> tuple[str, str] | None:
    """(name, url) of the project's default DVC remote (`dvc remote add -d`), or None."""
    config = Repo(".").config
    name = config["core"].get("remote")
    return (name, config["remote"][name]["url"]) if name else None


def _remote_error(verb: str, remote: tuple[str, str], error: Exception) -> RemoteFailed:
    cause = error.__cause__ or error
    return RemoteFailed(
        f"dvc {verb} with remote '{remote[0]}' ({remote[1]}) failed: {error} ({type(cause).__name__}: {cause}); "
        f"check that it is reachable and that this machine's credentials for it are valid "
        f"(`dvc remote modify {remote[0]} ...`, docs/gpu-box.md), or run with {verb}=false"
    )


@task(name="dvc-pull")
def dvc_pull(remote: tuple[str, str]) -> None:
    """Outputs of the last pushed run, so only what changed since then reruns (none yet: nothing to pull)."""
    try:
        Repo(".").pull(allow_missing=True)
    except DvcException as error:
        raise _remote_error("pull", remote, error) from error


@task(name="dvc-repro")
def dvc_repro(targets: list[str] | None, force: bool) -> list[str]:
    repo = Repo(".")
    kept = snapshot_records()
    try:
        stages = repo.reproduce(targets=targets or None, force=force)
    except (KeyboardInterrupt, TerminationSignal):  # SIGTERM (Prefect's bridge inside a flow run) or Ctrl-C
        lifetime.stop([pid for pid in lifetime.children(os.getpid()) if pid not in _prefect_server.SERVER_PIDS])
        raise StageFailed(f"interrupted: the running stage was stopped and dvc.lock records nothing of it; "
                          f"{restore_recorded_outputs(repo, kept)}") from None
    except ReproductionError as error:
        cause = error.__cause__ or error
        raise StageFailed(
            f"{error}: {cause}; see that stage's flow run logs (or its output above). "
            f"dvc.lock records nothing of it; {restore_recorded_outputs(repo, kept)}"
        ) from error
    return [stage.addressing for stage in stages]


def restore_recorded_outputs(repo: Repo, kept: dict[str, bytes]) -> str:
    """DVC deletes a stage's outputs before running it; after a failure, put the last recorded ones back:
    cached ones from the DVC cache, `cache: false` ones (metrics, plots, history) as they were before the run."""
    repo.checkout(force=True, allow_missing=True)
    for path, data in kept.items():
        if not Path(path).exists():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
    missing = [out.def_path for stage in repo.index.stages for out in stage.outs if not out.exists]
    restored = "the last recorded outputs are back as they were"
    return f"{restored}, except {', '.join(missing)} (never recorded)" if missing else restored


@task(name="dvc-push")
def dvc_push(remote: tuple[str, str]) -> None:
    try:
        Repo(".").push()
    except DvcException as error:
        raise _remote_error("push", remote, error) from error


@task(name="git-publish")
def git_publish(git_remote: str, branch: str, message: str) -> str | None:
    return publish_results(git_remote, branch, message)


@task(name="gto-register")
def gto_register(git_remote: str, commit: str | None, message: str) -> list[str]:
    """The results commit just published as the model's next version (skincancer.ops.registry): the version a
    user fetches with `dvc artifacts get`; nothing published, nothing registered."""
    tags = register_version(git_remote, commit, message)
    if tags:
        get_run_logger().info("registered %s on %s and pushed to %s", ", ".join(tags), commit[:12], git_remote)
    return tags


class GPUMissing(RuntimeError):
    """SKINCANCER_REQUIRE_GPU is set and TensorFlow sees no GPU."""


def check_gpu_if_required() -> None:
    """SKINCANCER_REQUIRE_GPU: fail before any stage runs, not hours into training on the CPU."""
    if not os.environ.get("SKINCANCER_REQUIRE_GPU"):
        return
    from skincancer.train.hardware import NoGPU, check_devices  # TensorFlow: only where a GPU is expected

    try:
        check_devices()
    except NoGPU as error:
        raise GPUMissing(str(error)) from None


def publish(before: dict | None, after: dict | None, ran: list[str]) -> None:
    """The metrics table and its diff against the previous run, as artifacts of this flow run."""
    logger = get_run_logger()
    logger.info("stages run: %s", ", ".join(ran) or "none (everything up to date)")
    if after is None:
        return
    create_table_artifact(
        key="skincancer-metrics",
        table=[{"metric": name, "value": value} for name, value in flatten(after).items()],
        description="metrics.json after this run",
    )
    diff = diff_markdown(before, after)
    heading = "Metrics against the previous run" if before else "Metrics (no previous run to compare with)"
    create_markdown_artifact(key="skincancer-metrics-diff", markdown=f"## {heading}\n\n{diff}\n", description=heading)
    logger.info("%s\n%s", heading, diff)


@flow(name="skincancer-pipeline")
def pipeline_flow(
    targets: list[str] | None = None,
    force: bool = False,
    pull: bool | None = None,
    push: bool | None = None,
    publish_to: str | None = None,
    git_remote: str = "origin",
) -> dict | None:
    """pull/push None: on when a default DVC remote is configured. publish_to: the results branch to commit
    dvc.lock and the git-tracked metrics to (on `git_remote`), after the DVC push."""
    logger = get_run_logger()
    check_gpu_if_required()
    remote = default_remote()
    if remote is None:
        if pull or push:
            raise RemoteFailed("pull/push asked for, but this project has no default DVC remote: `dvc remote add -d ...` (docs/gpu-box.md)")
        logger.info("no DVC remote configured (`dvc remote add -d ...`): nothing pulled or pushed, outputs stay on this machine")
    pull, push = (remote is not None if choice is None else choice for choice in (pull, push))
    before = read_metrics()
    if pull:
        dvc_pull(remote)
    ran = dvc_repro(targets, force)
    if push:
        dvc_push(remote)
    after = read_metrics()
    publish(before, after, ran)
    if publish_to:
        if not push:
            logger.warning("publishing dvc.lock without a DVC push: other machines cannot pull the outputs it names")
        message = commit_message(_head(), before, after, ran)
        gto_register(git_remote, git_publish(git_remote, publish_to, message), message)
    return {"stages": ran, "metrics": after}


def summary(ran: list[str], metrics: dict | None, seconds: float) -> str:
    """The run in three lines: what ran and how long, the test numbers, and test per resolution band (`make
    demo` ends with it)."""
    lines = [f"stages run: {', '.join(ran) or 'none (everything up to date)'} in {seconds:.0f} s"]
    if metrics and metrics.get("test"):
        lines.append(f"{split_summary(metrics, 'test')}; reports/report.html has the rest")
        lines.append(band_summary(metrics, "test"))
    return "\n".join(lines)


def _head() -> str:
    from skincancer.ops.nightly import git

    return git("rev-parse", "HEAD")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a scheduler, `kill`) stops the run as Ctrl-C does


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="stages to bring up to date (default: all)")
    parser.add_argument("--force", action="store_true", help="rerun the stages even if up to date")
    parser.add_argument("--pull", action=argparse.BooleanOptionalAction, default=None,
                        help="`dvc pull` first (default: when a DVC remote is configured)")
    parser.add_argument("--push", action=argparse.BooleanOptionalAction, default=None,
                        help="`dvc push` after (default: when a DVC remote is configured)")
    parser.add_argument("--publish", metavar="BRANCH", help="commit dvc.lock and metrics to BRANCH and push it")
    parser.add_argument("--git-remote", default="origin", help="where --publish pushes (default: origin)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.perf_counter()
    with shared_api():
        try:
            result = pipeline_flow(targets=args.targets or None, force=args.force, pull=args.pull, push=args.push,
                                   publish_to=args.publish, git_remote=args.git_remote)
        except (StageFailed, RemoteFailed, NightlyError, GPUMissing) as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(1) from None
    print(summary(result["stages"], result["metrics"], time.perf_counter() - started))


if __name__ == "__main__":
    main()
