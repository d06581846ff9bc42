"""Prefect flow `skincancer-pipeline`: `dvc repro` as one run (only stale stages run), for the nightly
deployment in prefect.yaml and for `python flows/pipeline.py [TARGET...] [--force] [--pull] [--push]`.

Each stage is still DVC's subprocess `python flows/<stage>.py`; they inherit PREFECT_API_URL, so
their stage flow runs land on the same API as this one. Without a configured API this process
starts Prefect's temporary server once and hands its URL down, instead of one server per stage
(skincancer.prefect_server.shared_api).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from dvc.exceptions import ReproductionError  # noqa: E402
from dvc.repo import Repo  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402

from skincancer import paths  # noqa: E402
from skincancer.metrics_diff import diff_markdown, flatten  # noqa: E402
from skincancer.prefect_server import shared_api  # noqa: E402


class StageFailed(RuntimeError):
    """A DVC stage failed; DVC recorded nothing for it (dvc.lock and its outputs are as before)."""


def read_metrics(path: Path = paths.METRICS) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


@task(name="dvc-pull")
def dvc_pull() -> None:
    """Outputs of the last pushed run, so only what changed since then reruns."""
    Repo(".").pull()


@task(name="dvc-repro")
def dvc_repro(targets: list[str] | None, force: bool) -> list[str]:
    repo = Repo(".")
    try:
        stages = repo.reproduce(targets=targets or None, force=force)
    except ReproductionError as error:
        cause = error.__cause__ or error
        raise StageFailed(
            f"{error}: {cause}; see that stage's flow run logs (or its output above). "
            f"dvc.lock is unchanged; {restore_recorded_outputs(repo)}"
        ) from error
    return [stage.addressing for stage in stages]


def restore_recorded_outputs(repo: Repo) -> str:
    """DVC deletes a stage's outputs before running it; after a failure, put the last recorded ones back.
    `cache: false` outputs are git's to restore: name them."""
    repo.checkout(force=True, allow_missing=True)
    missing = [out.def_path for stage in repo.index.stages for out in stage.outs if not out.exists]
    restored = "the last recorded outputs are checked out again from the DVC cache"
    if not missing:
        return restored
    return f"{restored}, except {', '.join(missing)} (not cached by DVC): `git checkout -- {' '.join(missing)}`"


@task(name="dvc-push")
def dvc_push() -> None:
    Repo(".").push()


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
def pipeline_flow(targets: list[str] | None = None, force: bool = False, pull: bool = False, push: bool = False) -> dict | None:
    before = read_metrics()
    if pull:
        dvc_pull()
    ran = dvc_repro(targets, force)
    if push:
        dvc_push()
    after = read_metrics()
    publish(before, after, ran)
    return after


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="stages to bring up to date (default: all)")
    parser.add_argument("--force", action="store_true", help="rerun the stages even if up to date")
    parser.add_argument("--pull", action="store_true", help="`dvc pull` first (needs a DVC remote)")
    parser.add_argument("--push", action="store_true", help="`dvc push` after (needs a DVC remote)")
    args = parser.parse_args(argv)
    with shared_api():
        try:
            pipeline_flow(targets=args.targets or None, force=args.force, pull=args.pull, push=args.push)
        except StageFailed as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(1) from None


if __name__ == "__main__":
    main()
