"""DVC stage `shard`: data/split/ -> data/shards/<split>-<i>-of-<n>.tfrecord + manifest.json."""

from collections.abc import Iterator, Sequence

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import run_stage, task_runner
from skincancer.core import paths
from skincancer.core.params import Params
from skincancer.shard import shard
from skincancer.shard.prepare import Encoded
from skincancer.shard.shard import EncodeJobs


def chunks_as_tasks(workers: int) -> shard.ChunkMapper:
    """Each chunk of images is a Prefect task run, on the flow's task runner (Pillow releases the GIL), a few
    chunks ahead of the writer (shard.ahead_of_the_writer: memory flat whatever the image count)."""

    def map_chunks(encode_chunk: shard.EncodeChunk, chunks: Sequence[EncodeJobs]) -> Iterator[list[Encoded]]:
        encode = task(encode_chunk, name="encode-chunk", cache_policy=NO_CACHE)
        yield from shard.ahead_of_the_writer(encode.submit, chunks, workers)

    return map_chunks


@flow(name="shard")
def shard_flow(params: Params) -> dict:
    manifest = shard.read_split_manifest(paths.SPLIT_MANIFEST)
    workers = max(params.shard.workers, params.orchestration.dask_workers)
    written = shard.write_shards(manifest, paths.SPLIT, paths.SHARDS, params.shard, chunks_as_tasks(workers))
    return written["splits"]


def main(params: Params) -> dict:
    return shard_flow.with_options(task_runner=task_runner(params.orchestration, params.shard.workers))(params)


if __name__ == "__main__":
    run_stage("shard", main)
