"""DVC stage `shard`: data/split/ -> data/shards/<split>-<i>-of-<n>.tfrecord + manifest.json."""

import pandas as pd
from _stage import run_stage
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from skincancer import paths, shard
from skincancer.params import Params


@flow(name="shard")
def shard_flow(params: Params) -> dict:
    manifest = pd.read_parquet(paths.SPLIT_MANIFEST)
    written = task(shard.write_shards, name="write-shards", cache_policy=NO_CACHE)(manifest, paths.SPLIT, paths.SHARDS, params.shard)
    return written["splits"]


if __name__ == "__main__":
    run_stage("shard", shard_flow)
