"""DVC stage `shard`: data/split/ -> data/shards/<split>-<i>-of-<n>.tfrecord + manifest.json."""

from collections.abc import Iterator

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import run_stage, task_runner
from skincancer.core import paths
from skincancer.core.params import Params
from skincancer.shard import shard
from skincancer.shard.prepare import Encoded, EncodeJob


def chunks_as_tasks(
    encode_chunk: shard.EncodeChunk, chunks: list[list[EncodeJob]]
) -> Iterator[list[Encoded]]:
    """Each chunk of images is a Prefect task run, on the flow's thread pool (Pillow releases the GIL).

    Results are handed back in chunk order while later chunks still run, and each is let go once
    handed over, so the flow holds only the chunks not yet written.
    """
    futures = list(task(encode_chunk, name="encode-chunk", cache_policy=NO_CACHE).map(chunks))
    futures.reverse()
    while futures:
        yield futures.pop().result()


@flow(name="shard")
def shard_flow(params: Params) -> dict:
    manifest = pd.read_parquet(paths.SPLIT_MANIFEST)
    written = shard.write_shards(manifest, paths.SPLIT, paths.SHARDS, params.shard, chunks_as_tasks)
    return written["splits"]


def main(params: Params) -> dict:
    return shard_flow.with_options(task_runner=task_runner(params.orchestration, params.shard.workers))(params)


if __name__ == "__main__":
    run_stage("shard", main)
