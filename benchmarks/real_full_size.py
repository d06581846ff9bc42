"""Full-size dermoscopy against the resized copies, measured on real ISIC images (issue 31, item 4).

Opt-in: it needs the real-data folder (docs/model-quality.md, "Real data").

    .venv/bin/python benchmarks/real_full_size.py [--real DIR] [--work DIR] [--only NAME ...]
    .venv/bin/python benchmarks/real_full_size.py --smoke [--work DIR]   # the same plumbing on the synthetic sample

--real defaults to $SKINCANCER_REAL_DATA. params/real.yaml on benchmarks/real_recipe.py's sources (the Kaggle
9-class zip, every image a 180 px copy, and the `isic image download` zip of full-size UDA-1 originals,
lesion-grouped through the HAM10000 table, the local MobileNetV2 ImageNet weights), one seed, so one split. Each
variant changes one thing of the recipe, in one throwaway project (a git repository, like a user's clone), a
`dvc repro` each, so only the stages its change touches rerun:

recipe
    params/real.yaml as it is: the threshold reaches its target on val pooled.
holds_on_band
    evaluate.threshold.holds_on band: the target reached on each resolution band with enough malignant val
    images too (evaluate alone reruns): what the promise on full-size images costs in specificity.
holds_on_band_5
    the same with evaluate.threshold.min_malignant 5: on these sources val holds 9 malignant full-size images,
    under the default 10, so only this variant makes (and prices) the promise on them.
balance_band
    train.balance band: each band drawn equally often while training (the full-size images are a small share).
color_constancy
    shard.color_constancy shades_of_gray: each image's illuminant corrected before training and scoring
    (Barata, Celebi and Marques, IEEE JBHI 2015; used by the ISIC 2019 winners, Gessert et al., MethodsX 2020),
    so the collections' cameras and lighting differ less.

Per variant, from its metrics.json (`by_band`, the resolution bands shard.bands names: `small` holds the 180 px
copies, `full_size` the originals) and predictions.csv: val and test figures per band and pooled (ROC AUC with the
lesion-grouped interval; sensitivity and specificity at the run's threshold, Wilson intervals); against `recipe`
(`against_recipe`), the paired AUC difference per band on the same val images (what the val-side rule reads) and
on the same test images (reported, never used to choose), and the change in specificity; and the issue's goals
on test (`goals`): full-size ROC AUC >= 0.85, full-size sensitivity within 5 points of the target, the small
copies' ROC AUC no lower than the low end of the recipe's interval.

Results go to WORK/results.json (one entry per variant, written as each finishes; a rerun skips variants already
there), each variant's metrics.json, predictions.csv, cards and timed dvc log to WORK/<variant>/, and a JSON line
per variant at the end. --smoke runs it all on the synthetic `sample` dataset with tiny params: minutes, no real
data (its bands split the sample's 320-640 px images at 512 px).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from common import (
    add_real_data_option,
    committed_project,
    machine,
    merge,
    say,
    start_work,
    timed_repro,
)
from real_cv import SMOKE_CHANGE as CV_SMOKE_CHANGE
from real_cv import keep_outputs
from real_recipe import variant_base, write_params
from recipe.scores import operating_point, paired_test_difference

VARIANTS = {
    "recipe": ("params/real.yaml as it is: the threshold holds on val pooled", {}),
    "holds_on_band": ("the threshold also reaches its target on each resolution band of val",
                      {"evaluate": {"threshold": {"holds_on": "band"}}}),
    "holds_on_band_5": ("the same, each band with at least 5 malignant val images (the default asks 10)",
                        {"evaluate": {"threshold": {"holds_on": "band", "min_malignant": 5}}}),
    "balance_band": ("each resolution band drawn equally often while training", {"train": {"balance": "band"}}),
    "color_constancy": ("Shades of Gray colour constancy before training and scoring",
                        {"shard": {"color_constancy": "shades_of_gray"}}),
}
BASE = "recipe"
BANDS = ("small", "full_size")
SPLITS = ("val", "test")
FULL_SIZE_AUC_GOAL = 0.85
SENSITIVITY_SLACK = 0.05  # full-size sensitivity within this of the threshold's target
# real_cv's tiny sample params; its bands split the sample's 320-640 px images at 512 px, with few malignant val images
SMOKE_CHANGE = CV_SMOKE_CHANGE | {"evaluate": CV_SMOKE_CHANGE["evaluate"] | {"threshold": {"min_malignant": 3}}}


def band_figures(metrics: dict) -> dict:
    """Per split, each band's metrics.json figures and the split pooled, with their AUC interval's width."""
    return {split: {"pooled": operating_point(metrics[split]),
                    **{band: operating_point(figures) for band, figures in metrics[split]["by_band"].items()}}
            for split in SPLITS}


def paired_by_band(base: pd.DataFrame, head: pd.DataFrame) -> dict:
    """head - base ROC AUC on the same images of each split and band (pooled too), paired over their groups."""
    def rows(frame: pd.DataFrame, split: str, band: str | None) -> pd.DataFrame:
        picked = frame[frame["split"] == split]
        return picked if band is None else picked[picked["band"] == band]

    return {split: {band or "pooled": paired_test_difference(rows(base, split, band), rows(head, split, band))
                    for band in (None, *BANDS)} for split in SPLITS}


def specificity_change(figures: dict, base: dict) -> dict:
    """Specificity (pooled and per band) of this variant minus the recipe's, per split: what a promise costs."""
    def change(split: str, part: str) -> float | None:
        mine, theirs = figures[split].get(part, {}).get("specificity"), base[split].get(part, {}).get("specificity")
        return None if mine is None or theirs is None else round(mine - theirs, 4)

    return {split: {part: change(split, part) for part in ("pooled", *BANDS)} for split in SPLITS}


def goals(figures: dict, base: dict, target: float) -> dict:
    """The issue's goals on test: each figure beside its goal, and whether it is met."""
    full, small = figures["test"].get("full_size", {}), figures["test"].get("small", {})
    floor = base["test"].get("small", {}).get("roc_auc_ci_low")
    sensitivity = full.get("sensitivity")
    return {
        "full_size_roc_auc": {"value": full.get("roc_auc"), "goal": FULL_SIZE_AUC_GOAL,
                              "met": full.get("roc_auc") is not None and full["roc_auc"] >= FULL_SIZE_AUC_GOAL},
        "full_size_sensitivity": {"value": sensitivity, "goal": round(target - SENSITIVITY_SLACK, 4),
                                  "met": sensitivity is not None and sensitivity >= target - SENSITIVITY_SLACK},
        "small_roc_auc": {"value": small.get("roc_auc"), "goal": floor,
                          "met": None if floor is None else small.get("roc_auc") is not None and small["roc_auc"] >= floor},
    }


def variant_entry(name: str, project: Path, env: dict, folder: Path) -> dict:
    """One variant (its params already written): its `dvc repro` timed, its outputs kept in ``folder``, its figures."""
    repro = timed_repro(project, env, folder / "repro.log")
    keep_outputs(project, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    description, change = VARIANTS[name]
    return {"name": name, "kind": "full_size_variant", "description": description, "change": change,
            "seconds": repro.seconds, "stage_seconds": repro.stage_seconds, "reused": repro.passed,
            "threshold": metrics["threshold"], "figures": band_figures(metrics)}


def compared_to_recipe(entry: dict, work: Path, results: list[dict], target: float) -> dict:
    """Against the recipe (run first in this work folder): paired AUC differences, specificity change, goals."""
    base = next((done for done in results if done["name"] == BASE), entry if entry["name"] == BASE else None)
    if base is None:
        return {}
    compared = {"goals": goals(entry["figures"], base["figures"], target)}
    if entry["name"] != BASE:
        predictions = pd.read_csv(work / entry["name"] / "reports" / "predictions.csv")
        base_predictions = pd.read_csv(work / BASE / "reports" / "predictions.csv")
        compared["against_recipe"] = {"auc_difference": paired_by_band(base_predictions, predictions),
                                      "specificity_change": specificity_change(entry["figures"], base["figures"])}
    return compared


def record(results: list[dict], out: Path, entry: dict) -> None:
    results.append(entry)
    out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"{entry['name']}: " + "; ".join(f"{split} {band} AUC {auc_in_words(entry['figures'][split].get(band, {}))}, "
                                         f"sensitivity {entry['figures'][split].get(band, {}).get('sensitivity')}"
                                         for split in SPLITS for band in BANDS) + f" in {entry['seconds'] / 60:.1f} min")


def auc_in_words(scores: dict) -> str:
    if scores.get("roc_auc") is None:
        return "undefined"
    return f"{scores['roc_auc']:.3f} ({scores['roc_auc_ci_low']:.3f}-{scores['roc_auc_ci_high']:.3f}, n={scores['n']})"


def figure_line(entry: dict) -> dict:
    """The JSON line printed for a variant: its headline figures (the whole entry is in results.json)."""
    test, val = entry["figures"]["test"], entry["figures"]["val"]
    paired = entry.get("against_recipe", {}).get("auc_difference", {})
    return {"benchmark": f"real_full_size/{entry['name']}", "threshold": entry["threshold"],
            **{f"{split}_{band}_auc": figures.get(band, {}).get("roc_auc")
               for split, figures in (("val", val), ("test", test)) for band in BANDS},
            "test_full_size_sensitivity": test.get("full_size", {}).get("sensitivity"),
            "test_specificity": test["pooled"]["specificity"],
            "val_full_size_auc_minus_recipe": paired.get("val", {}).get("full_size", {}).get("difference"),
            "goals_met": {name: goal["met"] for name, goal in entry.get("goals", {}).items()},
            "seconds": entry["seconds"], "smoke": entry.get("smoke", False)}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_real_data_option(parser)
    parser.add_argument("--work", type=Path, help="default: /tmp/skincancer-real-full-size (--smoke: ...-smoke)")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants to run (default: all, in order)")
    parser.add_argument("--smoke", action="store_true", help="the synthetic sample with tiny params, not the real data")
    args = parser.parse_args()
    args.work = args.work or Path("/tmp/skincancer-real-full-size" + ("-smoke" if args.smoke else ""))
    return args


def main() -> int:
    args = arguments()
    if (params := variant_base(args.real, SMOKE_CHANGE if args.smoke else None)) is None:
        return 0
    env, out, results = start_work(args.work)
    done = {entry["name"] for entry in results}
    target = params["evaluate"]["threshold"]["target"]
    project = args.work / "project"
    if not project.exists():
        committed_project(project, env, {})
    for name, (description, change) in VARIANTS.items():
        if name in done or (args.only and name not in args.only):
            continue
        say(f"{name}: {description}")
        write_params(project, merge(params, change))
        entry = variant_entry(name, project, env, args.work / name)
        entry.update(compared_to_recipe(entry, args.work, results, target), machine=machine(),
                     **({"smoke": True} if args.smoke else {}))
        record(results, out, entry)
    for entry in results:
        print(json.dumps(figure_line(entry)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
