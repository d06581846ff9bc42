"""Cross-validated ensembles and patient context, measured on real ISIC images (issue 30, item 6).

Opt-in: it needs the real-data folder (docs/model-quality.md, "Real data").

    .venv/bin/python benchmarks/real_cv.py [--real DIR] [--work DIR] [--folds K] [--only NAME ...]
    .venv/bin/python benchmarks/real_cv.py --smoke [--work DIR]   # the same plumbing on the synthetic sample

--real defaults to $SKINCANCER_REAL_DATA. Three variants of params/real.yaml on benchmarks/real_recipe.py's
sources (the Kaggle 9-class zip and the `isic image download` zip, lesion-grouped through the HAM10000 table,
the local MobileNetV2 ImageNet weights), one seed, so one set of test images:

single
    split.folds null: one model, early-stopped on val; threshold and calibration fitted on val.
ensemble
    split.folds K (default 5; 3 where 5 is out of reach): a model per fold, models/model.keras their mean;
    threshold and calibration fitted on the out-of-fold scores.
ensemble_metadata
    the same with train.metadata [age, sex, site] beside the pixels.

They run in that order in one throwaway project (a git repository, like a user's clone), each a `dvc repro`
after its params change, so a stage reruns only where its params changed: fetch runs once, split and shard once
per fold setting (`reused` names the stages a variant took from the one before, or from dvc's run cache: use a
fresh --work for fresh times). Every stage it ran is timed from dvc's output (`stage_seconds`, on whatever cores
the machine has: keep it otherwise idle), and each fold's model from the fold's own log line (`fold_seconds`, or
the train stage's time over K; `fold_seconds_from` says which).

Per variant, from its metrics.json and reports/predictions.csv (`scores`): `estimate` (the out-of-fold section,
or single's val), `test`, and each on the full-size source's images alone (`*_full_size`): ROC AUC with the
interval resampling lesion groups and its width, sensitivity and specificity at the run's threshold with
Wilson intervals; `calibration` as metrics.json has it. The ensembles also get their fold AUCs and spread
(`fold_auc`, `fold_roc_auc_mean`, `fold_roc_auc_sd`) and, against `single` (`against_single`): the paired
bootstrap test-AUC difference over the same test images, grouped by their `group` (all of them, and the
full-size ones), and the width of their out-of-fold interval over single's test interval. Test figures are
reported, never used to choose (issue 30).

Results go to WORK/results.json (one entry per variant, written as each finishes; a rerun skips the variants
already there with the same K), each variant's metrics.json, predictions.csv, cards, history and timed dvc log
to WORK/<variant>/, and the figures are printed as JSON lines at the end. --smoke runs it all on the synthetic
`sample` dataset with tiny params (small_cnn, 32 px, 2 epochs, K=3, no weights): minutes, no real data.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pandas as pd
from common import (
    TimedRepro,
    add_real_data_option,
    committed_project,
    machine,
    merge,
    say,
    start_work,
    timed_repro,
)
from real_recipe import variant_base, write_params
from recipe.scores import FULL_SIZE_SOURCE, operating_point, paired_test_difference, scores_at_threshold

METADATA = ["age", "sex", "site"]
VARIANTS = ("single", "ensemble", "ensemble_metadata")
DESCRIPTIONS = {
    "single": "one model (split.folds null), threshold and calibration on val",
    "ensemble": "one model per fold, their mean the model; threshold and calibration on the out-of-fold scores",
    "ensemble_metadata": "the ensemble with train.metadata [age, sex, site] beside the pixels",
}
# what each variant's project keeps (beside the timed dvc log), read back for the comparisons against single
KEPT = ("metrics.json", "reports/predictions.csv", "models/card.json", "models/dvclive/metrics.json")
SMOKE_CHANGE = {  # the sample's isic2020 images carry age, sex and site; its Udacity ones none (missing flags)
    "fetch": {"datasets": ["sample"], "sources": [], "metadata": [], "sample": {"n_images": 300, "seed": 0}},
    "shard": {"image_size": 32},
    "train": {"backbone": "small_cnn", "weights": None, "epochs": 2, "fine_tune_epochs": 0},
    "evaluate": {"bootstrap": 50, "tta": 1, "tta_scales": [1.0]},
}
# skincancer.train.cross_validation's line as a fold's process ends well
FOLD_DONE = re.compile(r"fold (?P<fold>\d+): done on .* in (?P<seconds>[\d.]+) s")
SMOKE_FULL_SIZE_SOURCE = "sample/isic2020"  # the sample has no full-size source: its ISIC 2020 images stand in


def variant_change(name: str, folds: int) -> dict:
    """The params a variant sets over the recipe: its fold count and its patient context."""
    return {"split": {"folds": None if name == "single" else folds},
            "train": {"metadata": METADATA if name == "ensemble_metadata" else []}}


def keep_outputs(project: Path, folder: Path) -> None:
    """Copy what the comparisons read out of the project, before the next variant's `dvc repro` replaces it."""
    for name in KEPT:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / name, folder / name)


def variant_scores(metrics: dict, predictions: pd.DataFrame, full_size_source: str) -> dict:
    """`estimate` (oof, or single's val) and `test`, each whole (metrics.json's own figures) and on the full-size
    source's images alone (scored from predictions.csv at the run's threshold, as metrics.json scores a split)."""
    estimate_split = "oof" if "oof" in metrics else "val"
    scores = {}
    for key, split in (("estimate", estimate_split), ("test", "test")):
        rows = predictions[(predictions["split"] == split) & (predictions["source"] == full_size_source)]
        scores[key] = operating_point(metrics[split])
        scores[f"{key}_full_size"] = scores_at_threshold(rows, metrics["threshold"])
    return {"estimate_split": estimate_split, "threshold": metrics["threshold"],
            "calibration": metrics.get("calibration"), "scores": scores}


def fold_figures(metrics: dict) -> dict:
    """The ensembles' per-fold AUCs (each member on the fold it never trained on) and their spread."""
    oof = metrics.get("oof")
    if oof is None:
        return {}
    return {"fold_auc": oof.get("folds"), "fold_roc_auc_mean": oof.get("fold_roc_auc_mean"),
            "fold_roc_auc_sd": oof.get("fold_roc_auc_sd")}


def against_single(entry: dict, predictions: pd.DataFrame, single: dict, single_predictions: pd.DataFrame,
                   full_size_source: str) -> dict:
    """The paired test-AUC difference (this run - single, same test images, grouped), on all test images and on
    the full-size ones, and this run's estimate interval width over single's test interval width."""
    def test_rows(frame: pd.DataFrame, full_size: bool) -> pd.DataFrame:
        rows = frame[frame["split"] == "test"]
        return rows[rows["source"] == full_size_source] if full_size else rows

    single_width = single["scores"]["test"]["roc_auc_ci_width"]
    width = entry["scores"]["estimate"]["roc_auc_ci_width"]
    return {
        "test_auc_difference": paired_test_difference(test_rows(single_predictions, False), test_rows(predictions, False)),
        "test_full_size_auc_difference": paired_test_difference(test_rows(single_predictions, True),
                                                                test_rows(predictions, True)),
        "estimate_width_over_single_test_width": round(width / single_width, 3) if width and single_width else None,
    }


def fold_timing(repro: TimedRepro, folds: int | None) -> dict:
    """Each fold model's seconds: its process's own time, from the train stage's "fold k: done on ... in X s" lines
    (skincancer.train.cross_validation; null for a fold resumed from an earlier run), or the stage's time over K
    where no such line came. Nothing where the stage did not run."""
    if folds is None or "train" not in repro.stage_seconds:
        return {}
    done = {int(match["fold"]): float(match["seconds"]) for _, line in repro.lines_of("train")
            if (match := FOLD_DONE.search(line))}
    if not done:
        return {"fold_seconds": [round(repro.stage_seconds["train"] / folds, 1)] * folds,
                "fold_seconds_from": "train_stage/K"}
    return {"fold_seconds": [done.get(fold) for fold in range(folds)], "fold_seconds_from": "log"}


def variant_entry(name: str, change: dict, project: Path, env: dict, folder: Path, full_size_source: str) -> dict:
    """One variant (its params already written): its `dvc repro` timed, its outputs kept in ``folder``, its scores."""
    repro = timed_repro(project, env, folder / "repro.log")
    keep_outputs(project, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    predictions = pd.read_csv(folder / "reports" / "predictions.csv")
    return {
        "name": name, "kind": "cv_variant", "description": DESCRIPTIONS[name], "change": change,
        "folds": change["split"]["folds"], "seconds": repro.seconds, "stage_seconds": repro.stage_seconds,
        "reused": repro.passed, **fold_timing(repro, change["split"]["folds"]),
        **variant_scores(metrics, predictions, full_size_source), **fold_figures(metrics),
    }


def compared_to_single(entry: dict, work: Path, results: list[dict], full_size_source: str) -> dict:
    """`against_single` where a `single` run of this work folder exists (it is run first), else nothing."""
    single = next((done for done in results if done["name"] == "single"), None)
    if entry["name"] == "single" or single is None:
        return {}
    predictions = pd.read_csv(work / entry["name"] / "reports" / "predictions.csv")
    single_predictions = pd.read_csv(work / "single" / "reports" / "predictions.csv")
    return {"against_single": against_single(entry, predictions, single, single_predictions, full_size_source)}


def record(results: list[dict], out: Path, entry: dict) -> None:
    results.append(entry)
    out.write_text(json.dumps(results, indent=2) + "\n")
    scores = entry["scores"]
    line = (f"{entry['name']}: {entry['estimate_split']} AUC {auc_in_words(scores['estimate'])}, "
            f"test AUC {auc_in_words(scores['test'])} in {entry['seconds'] / 60:.1f} min")
    paired = entry.get("against_single", {}).get("test_auc_difference", {})
    if paired.get("difference") is not None:
        line += f"; test AUC - single {paired['difference']:+.3f} ({paired['ci_low']:+.3f} to {paired['ci_high']:+.3f})"
    say(line)


def auc_in_words(scores: dict) -> str:
    if scores.get("roc_auc") is None:
        return "undefined"
    return f"{scores['roc_auc']:.3f} ({scores['roc_auc_ci_low']:.3f}-{scores['roc_auc_ci_high']:.3f}, n={scores['n']})"


def figure_line(entry: dict) -> dict:
    """The JSON line printed for a variant: its headline figures (the whole entry is in results.json)."""
    scores, paired = entry["scores"], entry.get("against_single", {})
    return {"benchmark": f"real_cv/{entry['name']}", "folds": entry["folds"],
            "estimate_split": entry["estimate_split"], "estimate_auc": scores["estimate"]["roc_auc"],
            "estimate_ci_width": scores["estimate"]["roc_auc_ci_width"], "test_auc": scores["test"]["roc_auc"],
            "test_full_size_auc": scores["test_full_size"].get("roc_auc"),
            "test_auc_minus_single": paired.get("test_auc_difference", {}).get("difference"),
            "seconds": entry["seconds"], "smoke": entry.get("smoke", False)}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_real_data_option(parser)
    parser.add_argument("--work", type=Path, help="default: /tmp/skincancer-real-cv (--smoke: /tmp/skincancer-real-cv-smoke)")
    parser.add_argument("--folds", type=int, help="K of the two ensembles (default 5; --smoke: 3)")
    parser.add_argument("--only", nargs="*", choices=VARIANTS, help="variants to run (default: all, in order)")
    parser.add_argument("--smoke", action="store_true", help="the synthetic sample with tiny params, not the real data")
    args = parser.parse_args()
    args.folds = args.folds or (3 if args.smoke else 5)
    if args.folds < 3:
        parser.error(f"--folds {args.folds}: cross-validation needs K >= 3 (split.folds)")
    args.work = args.work or Path("/tmp/skincancer-real-cv" + ("-smoke" if args.smoke else ""))
    return args


def main() -> int:
    args = arguments()
    if (params := variant_base(args.real, SMOKE_CHANGE if args.smoke else None)) is None:
        return 0
    env, out, results = start_work(args.work)
    done = {(entry["name"], entry["folds"]) for entry in results}
    full_size_source = SMOKE_FULL_SIZE_SOURCE if args.smoke else FULL_SIZE_SOURCE
    project = args.work / "project"
    if not project.exists():
        committed_project(project, env, {})
    for name in VARIANTS:
        change = variant_change(name, args.folds)
        if (name, change["split"]["folds"]) in done or (args.only and name not in args.only):
            continue
        say(f"{name}: {DESCRIPTIONS[name]} (split.folds {change['split']['folds']}, train.metadata {change['train']['metadata']})")
        write_params(project, merge(params, change))
        entry = variant_entry(name, change, project, env, args.work / name, full_size_source)
        entry.update(compared_to_single(entry, args.work, results, full_size_source), machine=machine(),
                     **({"smoke": True} if args.smoke else {}))
        record(results, out, entry)
    for entry in results:
        print(json.dumps(figure_line(entry)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
