"""The pull-request check (.github/workflows/model-report.yml): start from the base's published outputs,
rerun only what this change makes stale, and write the diff report against the base.

    python -m flows.pr_report --base origin/results [--out diff-report]

The base (the results branch the nightly run publishes, or the PR's base branch) holds the dvc.lock of
outputs that exist on the DVC remote, and the git-tracked outputs beside it. They replace this checkout's,
`dvc pull` restores what the lock names, and the pipeline flow reruns the stages whose code or params this
change touches; nothing else is retrained.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from flows.pipeline import main as run_pipeline
from skincancer.ops.nightly import NightlyError, take_records
from skincancer.review.diff_report import BaseUnreadable, write_diff_report


def take_base_records(base: str) -> None:
    """dvc.lock and the git-tracked outputs (metrics, plots, history) of the base, over this checkout's."""
    try:
        take_records(base)
    except (NightlyError, subprocess.CalledProcessError) as error:
        detail = error.stderr.strip() if isinstance(error, subprocess.CalledProcessError) else error
        raise SystemExit(
            f"error: cannot take the published results of {base} ({detail}); fetch the results branch the nightly "
            "run publishes (`git fetch origin results`), or pass the PR's base branch as --base"
        ) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision whose outputs to start from and compare with")
    parser.add_argument("--out", type=Path, default=Path("diff-report"), help="folder for report.md and its images")
    args = parser.parse_args(argv)
    take_base_records(args.base)
    run_pipeline(["--pull", "--no-push"])
    try:
        print(write_diff_report(args.base, Path("."), args.out))
    except (FileNotFoundError, BaseUnreadable) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
