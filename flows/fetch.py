"""DVC stage `fetch`: every dataset in fetch.datasets/sources -> data/raw/ + data/raw/index.parquet."""

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import run_stage, task_runner
from skincancer.core import paths
from skincancer.core.params import Params
from skincancer.ingest import fetch


def concurrent_downloads(function, jobs):
    """Each file is a Prefect task run (retried once more on top of the downloader's own retries)."""
    download = task(function, name="download", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
    return [future.result() for future in download.map(jobs)]


@flow(name="fetch")
def fetch_flow(params: Params) -> int:
    index = fetch.fetch(params.fetch, paths.RAW, concurrent_downloads, params.shard.max_pixels)
    return len(index)


def main(params: Params) -> int:
    return fetch_flow.with_options(task_runner=task_runner(params.orchestration, params.fetch.workers))(params)


if __name__ == "__main__":
    run_stage("fetch", main)
