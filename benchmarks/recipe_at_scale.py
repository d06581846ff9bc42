"""The real-data recipe's settings at ISIC 2020 scale (issue 32 item 5): measured on a prefix of the generated
ISIC 2020 archive, then projected per image to its 33,126 images.

    .venv/bin/python benchmarks/recipe_at_scale.py [--real DIR] [--images 2000]

A fresh project runs `dvc repro` of params/real.yaml (MobileNetV2 at 224 px, pad, the feature cache, a diagnosis
head, TTA 8 x 2 scales) with the generated archive's first --images images as its one source and one fine-tuning
epoch instead of 18; every stage is timed (common.timed_repro). From train's log: the feature extraction (from
"phase 1 on cached features" to the first phase-1 epoch line) and the fine-tuning epoch's seconds. Projection to
33,126 images, each cost linear in the images it reads:
    fetch, split, shard      their seconds x 33,126 / images
    extraction               its seconds x 33,126 / images (it reads train and val, the same shares at any size)
    fine-tuning              one epoch's seconds x 33,126 / images x params/real.yaml's fine_tune_epochs
    evaluate                 its seconds x 33,126 / images (val and test through 16 views)
The projection leaves out what does not grow with the images (start-up, the head's epochs on the cache) and
what early stopping would save; the weights file is the real-data folder's (no network).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml
from common import (
    ROOT,
    add_real_data_option,
    bench_tmp,
    committed_project,
    log_second,
    measurement,
    print_figures,
    project_env,
    real_data_problem,
    say,
    say_machine,
    timed_repro,
)

sys.path.insert(0, str(Path(__file__).resolve().parent / "corpora"))
from isic2020 import ISIC2020_IMAGES, isic2020_corpus  # noqa: E402

WEIGHTS = "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"
def train_parts(lines: list[str]) -> dict[str, float]:
    """The extraction's and the one fine-tuning epoch's seconds, from train's log lines."""
    start = next(log_second(line) for line in lines if "phase 1 on cached features" in line)
    first_epoch = next(log_second(line) for line in lines if "phase 1 epoch 1/" in line)
    fine_tune = next(float(re.search(r", ([0-9.]+) s$", line).group(1)) for line in lines if "phase 2 epoch 1/" in line)
    return {"extraction_s": round(first_epoch - start, 1), "fine_tune_epoch_s": fine_tune}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_real_data_option(parser)
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    if problem := real_data_problem(args.real, (WEIGHTS,)):
        say(problem)
        return 0
    say_machine()
    corpus = isic2020_corpus(args.images)
    params = yaml.safe_load((ROOT / "params" / "real.yaml").read_text())
    epochs = params["train"]["fine_tune_epochs"]
    params["fetch"] = {**params["fetch"], "datasets": [], "metadata": [],
                       "sources": [{"name": "isic2020", "url": corpus.as_uri(), "layout": "isic2020"}]}
    params["train"] |= {"weights": str(args.real.resolve() / WEIGHTS), "fine_tune_epochs": 1}
    with bench_tmp("recipe-at-scale") as tmp:
        env = project_env(tmp)
        project = committed_project(tmp / "project", env, {})
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        repro = timed_repro(project, env, tmp / "repro.log")
        parts = train_parts([line for _, line in repro.lines_of("train")])
        images = json.loads((project / "reports" / "split.json").read_text())["images"]
    scale = ISIC2020_IMAGES / args.images
    projected = {stage: round(repro.stage_seconds[stage] * scale, 1) for stage in ("fetch", "split", "shard", "evaluate")}
    projected |= {"extraction": round(parts["extraction_s"] * scale, 1),
                  "fine_tuning": round(parts["fine_tune_epoch_s"] * scale * epochs, 1)}
    total = round(sum(projected.values()), 1)
    say(f"{args.images} images ({images} after the split's removals): stages {repro.stage_seconds}, {parts}; "
        f"projected to {ISIC2020_IMAGES} images: {projected}, {total / 3600:.1f} h")
    print_figures([measurement("recipe_at_isic2020_scale_projected_s", total, "s", images=args.images,
                               stage_seconds=repro.stage_seconds, **parts, projected_s=projected,
                               fine_tune_epochs=epochs)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
