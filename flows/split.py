"""DVC stage `split`: index.parquet -> data/split/{train,val,test}/{benign,malignant}/ + manifest."""

import json

import pandas as pd
from _stage import run_stage
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from skincancer import paths, split
from skincancer.atomic import atomic_write_text
from skincancer.params import Params


def official_duplicate_pairs() -> list[tuple[str, str]]:
    if not paths.DUPLICATES.is_file():
        return []
    pairs = pd.read_parquet(paths.DUPLICATES)
    return list(zip(pairs["image_id_1"], pairs["image_id_2"], strict=True))


@flow(name="split")
def split_flow(params: Params) -> dict:
    index = pd.read_parquet(paths.INDEX)
    plan = task(split.plan_split, name="assign-splits", cache_policy=NO_CACHE)(
        index, params.split, params.labels, official_duplicate_pairs()
    )
    task(split.materialise, name="materialise-folders", cache_policy=NO_CACHE)(plan.manifest, paths.RAW, paths.SPLIT, plan.removed)
    summary = split.summary(plan)
    atomic_write_text(paths.SPLIT_SUMMARY, json.dumps(summary, indent=2) + "\n")
    get_run_logger().info(
        "split: %s; %d groups; ids in two splits: %s",
        {name: summary[name]["images"] for name in paths.SPLITS} | summary["removed"], summary["groups"],
        summary["spanning_splits"],
    )
    return summary


if __name__ == "__main__":
    run_stage("split", split_flow)
