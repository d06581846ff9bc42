"""What a change did to the model, for a reviewer: params changed, every metric with old, new and delta,
the ROC AUC difference on the test images both models scored with a paired bootstrap interval, and the
ROC and PR curves of the base drawn over this change's. One markdown file plus its images, the body of
the pull-request comment (`skincancer diff-report`), equally readable on a workstation.

params.yaml, metrics.json and reports/plots/*.csv are git-tracked (`cache: false`); reports/predictions.csv
is a DVC-cached output. Both are read at `base` through `dvc.api` without checking anything out: git
files from git, the predictions from the DVC cache of that revision (the PR workflow pulls it first).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from skincancer.core import paths
from skincancer.core.atomic import atomic_write_bytes, atomic_write_text
from skincancer.evaluate.figures import plt, png_bytes
from skincancer.evaluate.metrics import PairedDifference, paired_auc_difference
from skincancer.review.metrics_diff import diff_markdown

log = logging.getLogger(__name__)

# The paired bootstrap: evaluate's default resamples, a fixed seed, so a rerun gives the same verdict.
PAIRED_RESAMPLES = 1000
PAIRED_SEED = 0


@dataclass(frozen=True)
class Curve:
    name: str
    table: str  # plot CSV under reports/plots
    x: str
    y: str
    title: str
    earlier_tables: tuple[str, ...] = ()  # its names in older commits, so a base before a rename still draws

    def read(self, rev: str | None, root: Path) -> pd.DataFrame | None:
        for name in (self.table, *self.earlier_tables):
            if (text := read_at(paths.REPORTS / "plots" / name, rev, root)) is not None:
                return pd.read_csv(io.StringIO(text))
        return None


CURVES = (
    Curve("roc", "roc_test.csv", "fpr", "tpr", "ROC (test)", ("roc.csv",)),
    Curve("pr", "pr_test.csv", "recall", "precision", "Precision-recall (test)", ("pr.csv",)),
)


class BaseUnreadable(ValueError):
    """The base revision cannot be read: not a git repository, or no such revision."""


def read_at(path: Path, rev: str | None, root: Path) -> str | None:
    """A git-tracked file's text at `rev` (None: the workspace); None where it did not exist."""
    if rev is None:
        file = root / path
        return file.read_text() if file.is_file() else None
    import dvc.api
    from dvc.exceptions import NotDvcRepoError, PathMissingError
    from dvc.scm import SCMError
    from scmrepo.exceptions import SCMError as GitError

    try:
        return dvc.api.read(str(path), repo=str(root), rev=rev)
    except (PathMissingError, FileNotFoundError):
        return None
    except (SCMError, GitError, NotDvcRepoError) as error:
        raise BaseUnreadable(
            f"cannot read {path} at base {rev!r} ({error}); pass --base a branch, tag or commit of this git repository"
        ) from None


def params_changes(base: str, root: Path) -> list[tuple[str, object, object]]:
    """(param, old, new) for every param whose value differs from `base` (`dvc params diff`), sorted."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        changed = repo.params.diff(a_rev=base).get("diff", {})  # DVC leaves the key out when nothing changed
    return sorted(
        (name, values["old"], values["new"]) for file in changed.values() for name, values in file.items()
    )


def _value(value: object) -> str:
    return "-" if value is None else f"`{value}`"


def params_markdown(changes: list[tuple[str, object, object]]) -> str:
    if not changes:
        return "No params changed."
    rows = [f"| {name} | {_value(old)} | {_value(new)} |" for name, old, new in changes]
    return "\n".join(["| param | old | new |", "|---|---|---|", *rows])


def curve_png(curve: Curve, base: pd.DataFrame | None, head: pd.DataFrame | None, base_label: str) -> bytes:
    """The base curve (dashed) under this change's: how the trade-off moved, at a glance."""
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    for table, label, style in ((base, f"base ({base_label})", "--"), (head, "this change", "-")):
        if table is not None and not table.empty:
            axes.plot(table[curve.x], table[curve.y], style, label=label)
    if curve.name == "roc":
        axes.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    axes.set(xlabel=curve.x, ylabel=curve.y, title=curve.title, xlim=(0, 1), ylim=(0, 1.02))
    axes.legend(loc="lower right" if curve.name == "roc" else "lower left")
    return png_bytes(figure)


def read_predictions(rev: str | None, root: Path) -> pd.DataFrame | None:
    """reports/predictions.csv at `rev` (None: the workspace); None where it is neither in git nor in the
    DVC cache. Predictions written before groups were recorded count one group per image, said once."""
    text = read_at(paths.PREDICTIONS, rev, root)
    if text is None:
        return None
    predictions = pd.read_csv(io.StringIO(text), dtype={"image_id": str, "group": str})
    if "group" in predictions.columns:
        return predictions
    log.warning("%s at %s has no group column (written before the split recorded groups): each image counts as "
                "its own group in the paired bootstrap", paths.PREDICTIONS, rev or "the workspace")
    return predictions.assign(group=predictions["image_id"])


def shared_test_images(base: pd.DataFrame, head: pd.DataFrame) -> pd.DataFrame:
    """Test images both models scored, with the same label: image_id, label, group (this change's),
    probability_base, probability_head."""
    columns = ["image_id", "label", "probability"]
    base_test = base.loc[base["split"] == "test", columns]
    head_test = head.loc[head["split"] == "test", [*columns, "group"]]
    return head_test.merge(base_test, on=["image_id", "label"], suffixes=("_head", "_base"))


def _signed(value: float) -> str:
    return f"{value:+.4f}"


def paired_verdict(result: PairedDifference, images: int, groups: int, base_label: str) -> str:
    """The difference and whether its interval tells it apart from resampling noise, in words."""
    measured = (
        f"ROC AUC difference (this change - `{base_label}`) on the {images} test images both scored: "
        f"**{_signed(result.difference)}** (95% paired bootstrap CI {_signed(result.low)} to {_signed(result.high)}, "
        f"resampling {groups} groups with both models scored on the same draws)."
    )
    if result.low > 0 or result.high < 0:
        direction = "better" if result.low > 0 else "worse"
        return f"{measured} The interval excludes 0: this change ranks the test images {direction} than `{base_label}`."
    return f"{measured} The interval includes 0: not distinguishable from noise on {images} test images in {groups} groups."


def paired_markdown(base: pd.DataFrame | None, head: pd.DataFrame | None, base_label: str) -> str:
    """The paired comparison, or why there is none."""
    if head is None:
        return f"No paired comparison: this workspace has no {paths.PREDICTIONS} (run the pipeline first)."
    if base is None:
        return (f"No paired comparison: `{base_label}` has no {paths.PREDICTIONS} in git or in the DVC cache "
                "(`dvc pull` at the base restores it).")
    shared = shared_test_images(base, head)
    if shared.empty:
        return f"No paired comparison: `{base_label}` and this change share no test image (did the split change?)."
    if shared["label"].nunique() < 2:
        return f"No paired comparison: the {len(shared)} test images both scored hold one class only (AUC undefined)."
    result = paired_auc_difference(
        shared["label"].to_numpy(), shared["probability_base"].to_numpy(), shared["probability_head"].to_numpy(),
        shared["group"].to_numpy(), PAIRED_RESAMPLES, PAIRED_SEED,
    )
    verdict = paired_verdict(result, len(shared), shared["group"].nunique(), base_label)
    unpaired = int((head["split"] == "test").sum()) - len(shared)
    if unpaired:
        verdict += (f" {unpaired} of this change's test images are left out: `{base_label}` did not score them, "
                    "or scored them under another label.")
    return verdict


def write_diff_report(base: str, root: Path, out_dir: Path) -> Path:
    """out_dir/report.md (+ roc.png, pr.png): this workspace against git revision `base`."""
    new_metrics = read_at(paths.METRICS, None, root)
    if new_metrics is None:
        raise FileNotFoundError(f"{root / paths.METRICS} not found: run the pipeline first (`dvc repro`)")
    old_metrics = read_at(paths.METRICS, base, root)
    figures = []
    for curve in CURVES:
        png = curve_png(curve, curve.read(base, root), curve.read(None, root), base)
        atomic_write_bytes(out_dir / f"{curve.name}.png", png)
        figures.append(f"![{curve.title}]({curve.name}.png)")
    metrics_note = "" if old_metrics else f"\n\n`{base}` has no metrics.json: old values are `-`."
    text = f"""## Model report against `{base}`

### Params changed

{params_markdown(params_changes(base, root))}

### Metrics (old = `{base}`, new = this change){metrics_note}

{diff_markdown(json.loads(old_metrics) if old_metrics else None, json.loads(new_metrics))}

### Paired comparison (test)

{paired_markdown(read_predictions(base, root), read_predictions(None, root), base)}

### Curves (dashed: `{base}`)

{" ".join(figures)}
"""
    report = out_dir / "report.md"
    atomic_write_text(report, text)
    return report
