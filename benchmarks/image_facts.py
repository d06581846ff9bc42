"""Per-image facts on the real recipe's shards (opt-in: needs the real-data folder, docs/model-quality.md).

    .venv/bin/python benchmarks/image_facts.py [--real DIR] [--keep]     # DIR defaults to $SKINCANCER_REAL_DATA

Fetches the Kaggle 9-class zip and the `isic image download` zip (UDA-1) with the HAM10000 table, splits them
with params/real.yaml's labels and split, and shards them with its shard section at train.backbone's size,
as the real recipe's pipeline does. Then, on those shards, the per-image facts (ids, labels, diagnoses, groups)
train and evaluate read, in the reads each makes under params/real.yaml (diagnosis head, cached features):

image_facts_train_s
    train's reads: train (the diagnosis classes), train and val (phase 1's targets on cached features), train
    (the model card). ours: the shard stage's image table (data/shards/images.parquet), read per call.
    baseline: every record of the split parsed in Python, JPEG bytes included, as train and evaluate learned
    the facts before the table existed (`records_by_parsing` below). One thread each, 5 passes each, the two
    sides taking turns pass by pass (common.alternate; best of 5 before issue #32).
image_facts_evaluate_s
    evaluate's reads: val and test (the rows of predictions.csv), then the gallery's JPEG bytes of
    `evaluate.gallery` x 2 test images. ours: the table, then only the shards holding those images.
    baseline: the records parsed per split, then every test record parsed again for the gallery. Timed as
    image_facts_train_s is.

Both are common.paired_figure: the median of the passes' ratios (baseline / ours) with their min-max; ours and
baseline are each side's median pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml
from common import (
    ROOT,
    alternate,
    bench_tmp,
    paired_figure,
    print_figures,
    real_data_args,
    say,
    say_machine,
    timed,
)
from real_split import HAM, SOURCES, fetch_real

PASSES = 5
TRAIN_READS = ("train", "train", "val", "train")
EVALUATE_READS = ("val", "test")


def real_recipe_shards(real: Path, root: Path) -> tuple[Path, int]:
    """fetch -> split -> shard as the real recipe's stages run them; the shards folder and the gallery size."""
    from skincancer.core.backbones import BACKBONES
    from skincancer.core.params import LabelParams, ShardParams, SplitParams
    from skincancer.shard.shard import write_shards
    from skincancer.split.split import materialise, plan_split

    recipe = yaml.safe_load((ROOT / "params" / "real.yaml").read_text())
    index = fetch_real(real, root / "raw")
    plan = plan_split(index, SplitParams.model_validate(recipe["split"]), LabelParams.model_validate(recipe["labels"]))
    materialise(plan.manifest, root / "raw", root / "split", plan.removed)
    shard = ShardParams.model_validate({**recipe["shard"], "image_size": BACKBONES[recipe["train"]["backbone"]].default_size})
    seconds, document = timed(lambda: write_shards(plan.manifest, root / "split", root / "shards", shard))
    say(f"sharded {sum(s['count'] for s in document['shards'])} images into {len(document['shards'])} files "
        f"at {shard.image_size} px in {seconds:.0f} s")
    return root / "shards", recipe["evaluate"]["gallery"]


def records_by_parsing(shards_dir: Path, split: str) -> pd.DataFrame:
    """The facts as read before the shard stage wrote its image table: every record of the split parsed."""
    from skincancer.shard.tfrecords import read_examples
    from skincancer.train.data import shard_paths

    rows = [{"image_id": example["image/id"], "source": example["image/source"], "diagnosis": example["image/diagnosis"],
             "label": example["image/label"], "group": example["image/group"]}
            for example in read_examples(shard_paths(shards_dir, split))]
    return pd.DataFrame(rows, columns=["image_id", "source", "diagnosis", "label", "group"])


def gallery_bytes(files: list[Path], wanted: set[str]) -> dict[str, bytes]:
    from skincancer.shard.tfrecords import read_examples

    return {example["image/id"]: example["image/encoded"] for example in read_examples(files) if example["image/id"] in wanted}


def stage_reads(read: Callable[[Path, str], pd.DataFrame], shards_dir: Path, splits: tuple[str, ...]) -> None:
    for split in splits:
        read(shards_dir, split)


def main() -> int:
    if (args := real_data_args(__doc__.splitlines()[0], (HAM, *(file for _, file, _ in SOURCES)))) is None:
        return 0
    from skincancer.train.data import shard_paths, split_records

    say_machine()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with bench_tmp("image-facts", args.keep) as tmp:
        shards_dir, gallery = real_recipe_shards(args.real, tmp)
        test = split_records(shards_dir, "test")
        parsed = records_by_parsing(shards_dir, "test")
        assert test[parsed.columns].equals(parsed), "the table and the records disagree"
        shown = test.sort_values("image_id").head(2 * gallery)  # the gallery's count of confident mistakes
        wanted = set(shown["image_id"])
        every_test_shard = [Path(path) for path in shard_paths(shards_dir, "test")]
        holding = [shards_dir / file for file in sorted(set(shown["shard"]))]
        sides = {
            "train": {
                "ours": lambda: stage_reads(split_records, shards_dir, TRAIN_READS),
                "baseline": lambda: stage_reads(records_by_parsing, shards_dir, TRAIN_READS),
            },
            "evaluate": {
                "ours": lambda: (stage_reads(split_records, shards_dir, EVALUATE_READS), gallery_bytes(holding, wanted)),
                "baseline": lambda: (stage_reads(records_by_parsing, shards_dir, EVALUATE_READS),
                                     gallery_bytes(every_test_shard, wanted)),
            },
        }
        figures = []
        for stage, ways in sides.items():
            passes = alternate(PASSES, ways)
            record = paired_figure(f"image_facts_{stage}_s", passes["ours"], passes["baseline"], "s",
                                   images=int(sum(len(split_records(shards_dir, s)) for s in ("train", "val", "test"))),
                                   test_shards=len(every_test_shard), gallery_shards=len(holding))
            say(f"{stage}: facts read in {record['ours']:.3f} s from the table, {record['baseline']:.3f} s parsing "
                f"the records (median passes); {record['ratio']:.2f}x, passes {record['ratio_range']}")
            figures.append(record)
    print_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
