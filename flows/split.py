"""DVC stage `split`: index.parquet -> data/split/{train,val,test}/{benign,malignant}/ + manifest."""

import pandas as pd
from _stage import run_stage
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from skincancer import paths, split
from skincancer.params import Params


@flow(name="split")
def split_flow(params: Params) -> dict:
    index = pd.read_parquet(paths.INDEX)
    manifest = task(split.build_manifest, name="assign-splits", cache_policy=NO_CACHE)(index, params.split, params.labels)
    task(split.materialise, name="materialise-folders", cache_policy=NO_CACHE)(manifest, paths.RAW, paths.SPLIT)
    counts = split.split_counts(manifest)
    get_run_logger().info("split counts: %s", counts)
    return counts


if __name__ == "__main__":
    run_stage("split", split_flow)
