"""The real-data recipe (params/real.yaml) on real ISIC images, with its ablations (opt-in: needs the real-data
folder, docs/model-quality.md).

    .venv/bin/python benchmarks/real_recipe.py [--real DIR] [--work DIR] [--only NAME ...] [--skip-ablations]

--real defaults to $SKINCANCER_REAL_DATA.

One throwaway project (a git repository, like a user's clone) gets params/real.yaml with fetch pointed at
the Kaggle 9-class zip and the `isic image download` zip (UDA-1) as `file://` sources, the HAM10000
metadata table (lesion-grouped split) and the local MobileNetV2 ImageNet weights. Then, in one run:

recipe
    `dvc repro` of the whole pipeline in a fresh project, timed (target: under 30 minutes on 2 cores; keep the
    machine otherwise idle while it runs); its metrics.json and predictions.csv are scored on test as a
    whole and on the full-size source's test images alone.
linear probe (baseline)
    logistic regression on the pooled features of the same frozen ImageNet backbone, computed on the
    recipe's own shards; C chosen on val. Binary label and diagnosis targets.
ablations
    each changes one choice of the recipe (`dvc repro` reruns only the stages it affects); preprocessing
    choices (resize policy, colour constancy, resolution) are measured by the linear probe on their own
    shards. Choices are meant to be made on val, with test only reported; docs/model-quality.md says where
    they were not.
robustness
    the recipe model's median |delta p| between each test image and its half-size, JPEG q75 and
    quarter-turned copies (tests/perturbations.py), for all test images and the full-size ones; the same for
    the ablations in ROBUSTNESS_OF (TTA views and scales, resolution loss), the choices made for it.

Results go to WORK/results.json (one entry per run, written as each finishes) and are printed as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import yaml
from common import (
    ROOT,
    add_real_data_option,
    busy_cpu_seconds,
    children_cpu_seconds,
    committed_project,
    machine_facts,
    merge,
    real_data_problem,
    run,
    say,
    start_work,
    timed_repro,
)
from project_copy import set_params
from recipe.linear_probe import frozen_features, probe_probabilities
from recipe.scores import in_words, split_scores

HAM = "HAM10000_metadata.csv"
WEIGHTS = "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"
SOURCES = (("isic-9class", "skin-cancer-9-classes.zip", "class-folders"), ("isic-uda1", "isic-archive-uda1.zip", "isic-cli"))

# one change to the recipe each: (name, what it tests, params change), the ones a choice hangs on first
TRAINING_ABLATIONS = (
    ("class_weight", "imbalance: class_weight instead of none", {"train": {"imbalance": "class_weight"}}),
    ("resolution_augment", "resolution loss 0.5 while fine-tuning", {"train": {"augment": {"resolution": 0.5}}}),
    ("binary_head", "binary head instead of the diagnosis head", {"train": {"head": "binary"}}),
    ("fine_tune_12_epochs", "12 fine-tuning epochs instead of 18", {"train": {"fine_tune_epochs": 12}}),
    ("fine_tune_top_20", "fine-tune the top 20 layers (the old default) instead of 60",
     {"train": {"fine_tune_layers": 20}}),
    ("no_augmentation", "no augmentation while fine-tuning",
     {"train": {"augment": {"flip": False, "rotation": 0.0, "zoom": 0.0, "color": 0.0}}}),
)
EVALUATION_ABLATIONS = (
    ("tta_1", "no flips or turns at test time (tta 1 instead of 8)", {"evaluate": {"tta": 1}}),
    ("single_scale_tta", "each view at its own scale only (tta_scales [1.0] instead of [1.0, 0.5])",
     {"evaluate": {"tta_scales": [1.0]}}),
)
# ablations whose model is also put through the perturbations: the choices made for robustness
ROBUSTNESS_OF = ("tta_1", "single_scale_tta", "resolution_augment")
# preprocessing: linear probe on each variant's own shards (shard params changed one at a time)
PREPROCESSING_ABLATIONS = (
    ("crop", "centre crop instead of pad", {"resize": "crop"}),
    ("shades_of_gray", "Shades of Gray colour constancy", {"color_constancy": "shades_of_gray"}),
    ("crop_shades_of_gray", "centre crop and Shades of Gray", {"resize": "crop", "color_constancy": "shades_of_gray"}),
    ("size_160", "160 px instead of 224", {"image_size": 160}),
    ("size_192", "192 px instead of 224", {"image_size": 192}),
)


def real_fetch(real: Path) -> dict:
    return {
        "datasets": [],
        "sources": [{"name": name, "url": (real / file).as_uri(), "layout": layout} for name, file, layout in SOURCES],
        "metadata": [{"url": (real / HAM).as_uri(), "layout": "ham10000"}],
    }


def recipe_params(real: Path) -> dict:
    """params/real.yaml with fetch and weights pointed at the local copies (no network here)."""
    params = yaml.safe_load((ROOT / "params" / "real.yaml").read_text())
    params["fetch"] = {**params["fetch"], **real_fetch(real)}
    params["train"]["weights"] = str(real / WEIGHTS)
    return params


def variant_base(real: Path | None, smoke_change: dict | None) -> dict | None:
    """What a variant script's variants change: the recipe on the real sources, or (`smoke_change`, --smoke)
    params/real.yaml on the synthetic sample with that change; None, the reason said, without the real data."""
    if smoke_change is not None:
        return merge(yaml.safe_load((ROOT / "params" / "real.yaml").read_text()), smoke_change)
    if problem := real_data_problem(real, (HAM, WEIGHTS, *(file for _, file, _ in SOURCES))):
        say(problem)
        return None
    return recipe_params(real.resolve())


def scored_predictions(project: Path) -> dict:
    predictions = pd.read_csv(project / "reports" / "predictions.csv")
    return {split: split_scores(rows, rows["probability"].to_numpy())
            for split, rows in predictions.groupby("split") if split in ("val", "test")}


def record(results: list[dict], out: Path, entry: dict) -> None:
    results.append(entry)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if "scores" in entry:
        say(f"{entry['name']}: val {in_words(entry['scores']['val'])} | test {in_words(entry['scores']['test'])}")
    else:
        say(f"{entry['name']}: median |delta p| {entry['median_abs_delta']} (bar {entry['bar']})")


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def repro_entry(name: str, project: Path, env: dict, **about) -> dict:
    """`dvc repro` of the project, timed as a whole and stage by stage, with the machine and the commit measured:
    the stages it ran, its metrics and the scores of its predictions."""
    machine = machine_facts()  # before the run: its load average is the machine's, not ours
    machine_cpu, own_cpu = busy_cpu_seconds(), children_cpu_seconds()
    repro = timed_repro(project, env, project.parent / f"{name.replace('/', '-')}-repro.log")
    # what else ran meanwhile: a run beside another job reads slower
    others = (busy_cpu_seconds() - machine_cpu) - (children_cpu_seconds() - own_cpu)
    return {"name": name, "kind": "pipeline", **about, "seconds": repro.seconds, "stage_seconds": repro.stage_seconds,
            "stages": list(repro.stage_seconds), "machine": machine, "other_cpu_s": round(others, 1),
            "metrics": json.loads((project / "metrics.json").read_text()), "scores": scored_predictions(project)}


def probe_entries(name: str, description: str, shards: Path, weights: str) -> list[dict]:
    start = time.perf_counter()
    splits = frozen_features(shards, "mobilenet_v2", weights)
    entries = []
    for target in ("label", "diagnosis"):
        p = probe_probabilities(splits, target)
        entries.append({
            "name": f"{name}/probe_{'binary' if target == 'label' else 'diagnosis'}", "kind": "linear_probe",
            "description": description, "features_seconds": round(time.perf_counter() - start, 1),
            "scores": {split: split_scores(splits[split].records, p[split]) for split in ("val", "test")},
        })
    return entries


def robustness_entry(name: str, project: Path, saved: Path, out_dir: Path) -> dict:
    """A model's probabilities on each test image and on its half-size, JPEG q75 and quarter-turned
    copies: median |delta p| per perturbation (bar: 0.05), for all test images and the full-size ones alone."""
    from perturbations import MAX_MEDIAN_DELTA, median_abs_delta, write_perturbed_copies
    from recipe.scores import FULL_SIZE_SOURCE

    from skincancer.core.model_card import read_card
    from skincancer.evaluate.inference import load_for_inference
    from skincancer.serve.predict import predict

    manifest = pd.read_parquet(project / "data" / "split" / "manifest.parquet").query("split == 'test'")
    originals = [project / "data" / "split" / path for path in manifest["path"]]
    full_size = (manifest["source"] == FULL_SIZE_SOURCE).to_numpy()
    model_path = saved / "models" / "model.keras"
    model, card = load_for_inference(model_path), read_card(saved / "models" / "card.json", model_path)

    def probabilities(files: list[Path]):
        return predict(files, model, card, progress=False)["probability"].to_numpy()

    base = probabilities(originals)
    deltas = {}
    for perturbation, copies in write_perturbed_copies(originals, out_dir).items():
        copy = probabilities(copies)
        deltas[perturbation] = {"all": round(median_abs_delta(base, copy), 4),
                                "full_size": round(median_abs_delta(base[full_size], copy[full_size]), 4)}
    return {"name": name, "kind": "robustness", "bar": MAX_MEDIAN_DELTA, "n": len(base),
            "n_full_size": int(full_size.sum()), "median_abs_delta": deltas}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_real_data_option(parser)
    parser.add_argument("--work", type=Path, default=Path("/tmp/skincancer-real-recipe"))
    parser.add_argument("--only", nargs="*", help="ablation names to run (default: all)")
    parser.add_argument("--skip-ablations", action="store_true")
    args = parser.parse_args()
    if problem := real_data_problem(args.real, (HAM, WEIGHTS, *(file for _, file, _ in SOURCES))):
        say(problem)
        return 0
    env, out, results = start_work(args.work)
    done = {entry["name"] for entry in results}
    project = args.work / "project"
    params = recipe_params(args.real.resolve())
    weights = params["train"]["weights"]
    if not project.exists():
        committed_project(project, env, {})
        write_params(project, params)
    wanted = set(args.only) if args.only else None

    if "recipe" not in done:
        record(results, out, repro_entry("recipe", project, env))
        (args.work / "recipe-reports").mkdir(exist_ok=True)
        run(["cp", "-r", "reports", "metrics.json", "models", str(args.work / "recipe-reports")], project, env)
    if "recipe/probe_binary" not in done:
        for entry in probe_entries("recipe", "linear probe on the recipe's shards", project / "data" / "shards", weights):
            record(results, out, entry)
    if "robustness" not in done and (not wanted or "robustness" in wanted):
        record(results, out, robustness_entry("robustness", project, args.work / "recipe-reports",
                                              args.work / "perturbed"))
    if args.skip_ablations:
        return 0

    for name, description, change in PREPROCESSING_ABLATIONS:
        if f"{name}/probe_binary" in done or (wanted and name not in wanted):
            continue
        from skincancer.core.params import ShardParams
        from skincancer.shard.shard import write_shards

        shard_params = ShardParams.model_validate({**params["shard"], "image_size": 224, **change})
        shards = args.work / f"shards-{name}"
        if not (shards / "manifest.json").exists():
            manifest = pd.read_parquet(project / "data" / "split" / "manifest.parquet")
            write_shards(manifest, project / "data" / "split", shards, shard_params)
        for entry in probe_entries(name, description, shards, weights):
            record(results, out, entry)

    for name, description, change in EVALUATION_ABLATIONS + TRAINING_ABLATIONS:  # the cheap ones first
        if name in done or (wanted and name not in wanted):
            continue
        write_params(project, params)
        set_params(project, change)
        record(results, out, repro_entry(name, project, env, description=description, change=change))
        if name in ROBUSTNESS_OF:
            record(results, out, robustness_entry(f"{name}/robustness", project, project,
                                                  args.work / "perturbed"))
    write_params(project, params)
    for entry in results:
        if "scores" in entry:
            print(json.dumps({"benchmark": f"real_recipe/{entry['name']}", "test_auc": entry["scores"]["test"]["all"]["roc_auc"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
