"""The out-of-distribution flag measured on real ISIC images (issue 33, part 6): the share of real test images it
flags, and the share of clearly foreign inputs.

Opt-in: it needs a project where params/real.yaml ran on the real data (docs/model-quality.md, "Real data").

    .venv/bin/python benchmarks/real_ood.py --project DIR [--work DIR] [--per-kind N] [--seed S] [--percentile P]
    .venv/bin/python benchmarks/real_ood.py --build [--real DIR] [--work DIR]   # builds that project: hours on 2 cores

--project: a project (a clone) in which `dvc repro` ran params/real.yaml through evaluate; its models/model.keras,
models/card.json and data/shards are read, nothing in it is written. --build instead builds one in WORK/project
from --real (default $SKINCANCER_REAL_DATA) as benchmarks/real_recipe.py builds its recipe, and reuses it on a
rerun; with neither, the script says what to pass and measures nothing (so `make bench` passes it by).

With the library's own code (skincancer.evaluate.ood, as the evaluate stage runs it): the measure is fitted on the
pooled features of the train split's images, cut at the --percentile (default: params/real.yaml's
evaluate.ood.percentile) of the val images' scores, and then
- test: the share of the real test images over the cut-off, with its Wilson interval; target: the stated tail,
  100 - percentile %, within that interval;
- foreign: the share flagged among N inputs of each foreign kind (tests/test_ood.py draws them): uniform RGB
  noise, flat colours from anywhere in the RGB cube, rendered text on plain backgrounds, and square crops (30-100%
  of the short side, mirrored half the time) of the three natural photographs scikit-learn and matplotlib ship
  (a Chinese temple, a flower, Grace Hopper's portrait); scored through `skincancer predict`'s own function, with
  the project's card and the fit written beside it; target: at least 95%.
Beside ours (probabilistic PCA, skincancer.evaluate.ood.COMPONENTS components), the same figures for the
alternatives the choice was made against (`alternatives`, from the same features): 32 and 128 components, and a
Ledoit-Wolf shrinkage covariance over all the features. The number of components was chosen on the foreign inputs
of --seed 0; the default --seed 1 draws others, so the figures are not those it was chosen on. Each foreign kind's
share, and how many foreign inputs the model calls malignant, are in the results.

Results go to WORK/results.json, the foreign images to WORK/foreign/, the card and fit predict read to WORK/models/,
and a JSON line per figure at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from common import (
    ROOT,
    add_real_data_option,
    committed_project,
    machine_facts,
    project_env,
    say,
    say_machine,
    timed_repro,
)
from real_recipe import variant_base, write_params

DEFAULT_PERCENTILE = yaml.safe_load((ROOT / "params" / "real.yaml").read_text())["evaluate"]["ood"]["percentile"]
PARTS = ("train", "val", "test")
ALTERNATIVE_COMPONENTS = (32, 128)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_real_data_option(parser)
    parser.add_argument("--project", type=Path, help="a project params/real.yaml ran in through evaluate")
    parser.add_argument("--build", action="store_true", help="no --project: build one in WORK/project (hours)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/skincancer-real-ood"), help="default: %(default)s")
    parser.add_argument("--per-kind", type=int, default=30, help="foreign inputs of each kind (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="draws the foreign inputs (default: %(default)s; 0 chose "
                        "the number of components)")
    parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                        help="the cut-off's percentile of val's scores (default: params/real.yaml's, %(default)s)")
    return parser.parse_args()


def project_to_measure(args: argparse.Namespace) -> Path | None:
    """--project as given, or (--build, or built before) params/real.yaml run through evaluate on --real in
    WORK/project; None, the reason said, otherwise."""
    if args.project is not None:
        return args.project
    if (params := variant_base(args.real, None)) is None:
        return None
    project = args.work / "project"
    built = (project / "models" / "card.json").is_file()
    if not (args.build or built):
        say("no project: pass --project DIR (a project in which params/real.yaml ran through evaluate), or --build to "
            f"build one in {project} from the real data (hours on 2 cores); nothing measured")
        return None
    if not built:
        env = project_env(args.work)
        shutil.rmtree(project, ignore_errors=True)
        committed_project(project, env, {})
        write_params(project, params)
        timed_repro(project, env, args.work / "repro.log")
    return project


def share(in_distribution) -> dict:
    """The share of images flagged (not in distribution) with its Wilson interval, as metrics.json's `ood` has it."""
    from skincancer.evaluate.ood import flagged_share

    return flagged_share(pd.Series(np.asarray(in_distribution, bool)))


def split_features(project: Path, card) -> tuple[object, dict[str, np.ndarray]]:
    """The model's feature scorer and the pooled features of each split's images, as evaluate reads them."""
    from skincancer.evaluate.evaluate import split_features as features_of
    from skincancer.evaluate.inference import load_for_inference
    from skincancer.evaluate.ood import feature_scorer

    scorer = feature_scorer(load_for_inference(project / "models" / "model.keras"))
    return scorer, {part: features_of(scorer, project / "data" / "shards", part, card.context_fields) for part in PARTS}


def foreign_features(scorer, card, files: list[Path]) -> np.ndarray:
    """The foreign files' pooled features, prepared as predict prepares them (for the alternatives)."""
    import tensorflow as tf

    from skincancer.evaluate.inference import decode, prepare
    from skincancer.evaluate.ood import scores_and_features

    images = tf.data.Dataset.from_tensor_slices([prepare(path, card.preparation).jpeg for path in files]).map(decode)
    return scores_and_features(scorer, images.batch(32))[1]


def card_with_fit(project: Path, fit, layers: list[str], percentile: float, cutoff: float, folder: Path):
    """The project's card with this fit recorded beside it in `folder`, read back as predict reads a card."""
    from skincancer.core.model_card import ood_path_for, read_card, write_card
    from skincancer.evaluate.ood import card_record

    folder.mkdir(parents=True, exist_ok=True)
    document = json.loads((project / "models" / "card.json").read_text())
    (path := ood_path_for(folder / "card.json")).write_bytes(fit.npz_bytes())
    document["evaluation"]["ood"] = card_record(fit, layers, ["train"], "val", percentile, cutoff, path)
    write_card(document, folder / "card.json")
    return read_card(folder / "card.json", project / "models" / "model.keras")


def flagged_by(score, features: dict[str, np.ndarray], foreign: np.ndarray, percentile: float) -> dict:
    """A measure's figures: the val cut-off, the share of test and of foreign inputs over it."""
    cutoff = float(np.percentile(score(features["val"]), percentile))
    return {"cutoff": round(cutoff, 4), "test": share(score(features["test"]) <= cutoff),
            "foreign": share(score(foreign) <= cutoff)}


def alternatives(features: dict[str, np.ndarray], foreign: np.ndarray, percentile: float) -> dict:
    """The measures the choice was made against, on the same features."""
    from sklearn.covariance import LedoitWolf

    from skincancer.evaluate.ood import fit_ood

    found = {f"ppca_{k}": flagged_by(fit_ood(features["train"], components=k).score, features, foreign, percentile)
             for k in ALTERNATIVE_COMPONENTS}
    shrunk = LedoitWolf().fit(features["train"])
    found["ledoit_wolf_full"] = flagged_by(lambda x: np.sqrt(np.maximum(shrunk.mahalanobis(x), 0)), features, foreign,
                                           percentile)
    return found


def measure(project: Path, args: argparse.Namespace) -> dict:
    from test_ood import FOREIGN_GOAL, foreign_images  # tests/ is on the path (common): the inputs the tests flag

    from skincancer.core.model_card import card_path_for, read_card
    from skincancer.evaluate.inference import load_for_inference
    from skincancer.evaluate.ood import cutoff_at, feature_layers, fit_ood
    from skincancer.evaluate.summary import flagged_in_words
    from skincancer.serve.predict import predict

    model_path = project / "models" / "model.keras"
    card = read_card(card_path_for(model_path), model_path)
    start = time.perf_counter()
    scorer, features = split_features(project, card)
    say(f"features of {', '.join(f'{len(features[part])} {part}' for part in PARTS)} images "
        f"({features['train'].shape[1]} each) in {time.perf_counter() - start:.0f} s")
    fit = fit_ood(features["train"])
    val_scores = fit.score(features["val"]).round(6)
    cutoff = cutoff_at(val_scores, args.percentile)
    test_scores = fit.score(features["test"]).round(6)
    test = share(test_scores <= cutoff)
    say(f"cut-off {cutoff:.4f} (percentile {args.percentile:g} of {len(val_scores)} val scores): test images flagged "
        f"{flagged_in_words(test)}; target {100 - args.percentile:g}% within that interval")
    kinds = foreign_images(args.work / "foreign", args.per_kind, args.seed)
    files = [path for paths in kinds.values() for path in paths]
    fitted_card = card_with_fit(project, fit, feature_layers(scorer), args.percentile, cutoff, args.work / "models")
    start = time.perf_counter()
    frame = predict(files, load_for_inference(model_path), fitted_card, progress=False)
    say(f"predict on {len(files)} foreign inputs in {time.perf_counter() - start:.0f} s")
    inside = frame["in_distribution"].astype(bool).to_numpy()
    foreign = share(inside)
    kind_of = np.repeat(list(kinds), [len(paths) for paths in kinds.values()])
    per_kind = {kind: share(inside[kind_of == kind]) for kind in kinds}
    say(f"foreign inputs flagged {flagged_in_words(foreign)}; "
        + ", ".join(f"{kind} {flagged_in_words(figures)}" for kind, figures in per_kind.items()))
    return {
        "project": str(project), "percentile": args.percentile, "cutoff": cutoff, "foreign_seed": args.seed,
        "features": int(features["train"].shape[1]), "components": int(fit.components.shape[0]),
        "images": {part: len(features[part]) for part in PARTS},
        "test": test, "test_met": test["flagged_ci_low"] <= (100 - args.percentile) / 100,
        "foreign": foreign, "foreign_goal": FOREIGN_GOAL, "foreign_met": foreign["flagged"] >= FOREIGN_GOAL,
        "foreign_per_kind": per_kind,
        "foreign_called_malignant": int(frame["prediction"].sum()),
        "ood_score_median": {"val": float(np.median(val_scores)), "test": float(np.median(test_scores)),
                             "foreign": float(frame["ood_score"].median())},
        "alternatives": alternatives(features, foreign_features(scorer, card, files), args.percentile),
        "machine": machine_facts(),
    }


def figure_lines(result: dict) -> list[dict]:
    tail = round(1 - result["percentile"] / 100, 4)
    return [
        {"benchmark": "real_ood/test_flagged", **result["test"], "target": tail, "met": result["test_met"],
         "percentile": result["percentile"]},
        {"benchmark": "real_ood/foreign_flagged", **result["foreign"], "target": result["foreign_goal"],
         "met": result["foreign_met"],
         "per_kind": {kind: figures["flagged"] for kind, figures in result["foreign_per_kind"].items()}},
        *({"benchmark": f"real_ood/alternative/{name}", "test_flagged": figures["test"]["flagged"],
           "foreign_flagged": figures["foreign"]["flagged"]} for name, figures in result["alternatives"].items()),
    ]


def main() -> int:
    args = arguments()
    if (project := project_to_measure(args)) is None:
        return 0
    say_machine()
    args.work.mkdir(parents=True, exist_ok=True)
    result = measure(project, args)
    (args.work / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    for line in figure_lines(result):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
