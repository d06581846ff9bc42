"""DVC stage `fetch`: every dataset in fetch.datasets -> data/raw/ + data/raw/index.parquet."""

from _stage import run_stage
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from skincancer import fetch, paths
from skincancer.params import Params


@flow(name="fetch")
def fetch_flow(params: Params) -> int:
    index = task(fetch.fetch, name="fetch-datasets", cache_policy=NO_CACHE)(params.fetch, paths.RAW)
    return len(index)


if __name__ == "__main__":
    run_stage("fetch", fetch_flow)
