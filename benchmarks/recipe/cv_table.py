"""docs/model-quality.md's cross-validation tables from a benchmarks/real_cv.py work folder, and the val-side
comparisons its rule decides by (issue 30: out-of-fold now, not one fold).

    .venv/bin/python benchmarks/recipe/cv_table.py WORK [--json OUT]

Val side, each a paired cluster-bootstrap ROC AUC difference over the same images (their lesion groups):
folds      the fold models' out-of-fold scores against the single model's own, on the single model's val
           images (the images both runs held out from training; neither is the ensemble: the ensemble's mean
           has no held-out score outside test);
metadata   the ensemble with patient context against the ensemble without, on every out-of-fold image.
Each on all those images and on the full-size source's alone. Test figures are printed beside, never used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recipe.scores import FULL_SIZE_SOURCE, paired_test_difference  # noqa: E402


def predictions(work: Path, variant: str) -> pd.DataFrame:
    return pd.read_csv(work / variant / "reports" / "predictions.csv")


def held_out(frame: pd.DataFrame, split: str, ids: pd.Series | None = None) -> pd.DataFrame:
    rows = frame[frame["split"] == split]
    return rows if ids is None else rows[rows["image_id"].isin(ids)]


def both_ways(base: pd.DataFrame, head: pd.DataFrame) -> dict:
    """head - base on all the rows and on the full-size source's rows alone."""
    full = lambda rows: rows[rows["source"] == FULL_SIZE_SOURCE]  # noqa: E731
    return {"all": paired_test_difference(base, head), "full_size": paired_test_difference(full(base), full(head))}


def val_side(work: Path) -> dict:
    """The comparisons the variants in `work` allow (ensemble_metadata's once it has run)."""
    single, ensemble = predictions(work, "single"), predictions(work, "ensemble")
    val = held_out(single, "val")
    sides = {
        "folds_vs_single_on_single_val": both_ways(val, held_out(ensemble, "oof", val["image_id"])),
        "test_ensemble_vs_single": both_ways(held_out(single, "test"), held_out(ensemble, "test")),
    }
    if (work / "ensemble_metadata" / "reports").is_dir():
        metadata = predictions(work, "ensemble_metadata")
        sides["metadata_vs_ensemble_on_oof"] = both_ways(held_out(ensemble, "oof"), held_out(metadata, "oof"))
        sides["test_metadata_vs_ensemble"] = both_ways(held_out(ensemble, "test"), held_out(metadata, "test"))
    return sides


def cell(scores: dict) -> str:
    if not scores.get("n"):
        return "-"
    return f"{scores['roc_auc']:.3f} ({scores['roc_auc_ci_low']:.3f}-{scores['roc_auc_ci_high']:.3f})"


def operating(scores: dict) -> str:
    if not scores.get("n"):
        return "-"
    return (f"{scores['sensitivity']:.2f} ({scores['sensitivity_ci_low']:.2f}-{scores['sensitivity_ci_high']:.2f}) / "
            f"{scores['specificity']:.2f} ({scores['specificity_ci_low']:.2f}-{scores['specificity_ci_high']:.2f})")


def difference(entry: dict) -> str:
    if entry.get("difference") is None:
        return "-"
    return f"{entry['difference']:+.3f} ({entry['ci_low']:+.3f} to {entry['ci_high']:+.3f})"


def variants_table(results: list[dict]) -> str:
    lines = ["| variant | held-out estimate: ROC AUC (95% CI) | its CI width | test ROC AUC (95% CI) | test CI width | "
             "test sens / spec at the threshold (95% CI) | full-size test ROC AUC (95% CI) | full-size test sens / spec | "
             "minutes | per fold (min) |", "|---|---|---:|---|---:|---|---|---|---:|---:|"]
    for entry in results:
        scores = entry["scores"]
        folds = entry.get("fold_seconds") or []
        per_fold = f"{sum(folds) / len(folds) / 60:.1f}" if folds and all(folds) else "-"
        lines.append(
            f"| {entry['name']} ({entry['estimate_split']}) | {cell(scores['estimate'])} | "
            f"{scores['estimate'].get('roc_auc_ci_width', '-')} | {cell(scores['test'])} | "
            f"{scores['test'].get('roc_auc_ci_width', '-')} | {operating(scores['test'])} | "
            f"{cell(scores['test_full_size'])} | {operating(scores['test_full_size'])} | {entry['seconds'] / 60:.1f} | "
            f"{per_fold} |")
    return "\n".join(lines)


def comparisons_table(sides: dict) -> str:
    lines = ["| comparison (head - base, same images) | all: ROC AUC difference (95% CI) | n (malignant) | "
             "full-size: difference (95% CI) | n (malignant) |", "|---|---|---:|---|---:|"]
    for name, entry in sides.items():
        lines.append(f"| {name} | {difference(entry['all'])} | {entry['all']['n']} ({entry['all']['n_malignant']}) | "
                     f"{difference(entry['full_size'])} | {entry['full_size']['n']} ({entry['full_size']['n_malignant']}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="benchmarks/real_cv.py's --work folder")
    parser.add_argument("--json", type=Path, help="also write the val-side comparisons here")
    args = parser.parse_args()
    results = json.loads((args.work / "results.json").read_text())
    sides = val_side(args.work)
    print(variants_table(results), "", comparisons_table(sides), sep="\n")
    if args.json:
        args.json.write_text(json.dumps(sides, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
