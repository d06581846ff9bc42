"""DVC stage `split`: index.parquet -> data/split/{train,val,test}/{benign,malignant}/ + manifest."""

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows._stage import run_stage
from skincancer.core import paths
from skincancer.core.params import Params
from skincancer.split import split


@task(name="assign-splits", cache_policy=NO_CACHE)
def plan_from_index(params: Params) -> split.SplitPlan:
    """The index is read inside the task, so nothing holds it once the plan is made (Prefect keeps a task's
    arguments while the flow runs)."""
    index = pd.read_parquet(paths.INDEX)
    return split.plan_split(index, params.split, params.labels, split.official_duplicate_pairs(paths.DUPLICATES))


@flow(name="split")
def split_flow(params: Params) -> dict:
    plan = plan_from_index(params)
    task(split.materialise, name="materialise-folders", cache_policy=NO_CACHE)(plan.manifest, paths.RAW, paths.SPLIT, plan.removed)
    summary = split.write_summary(plan, paths.SPLIT_SUMMARY)
    get_run_logger().info(split.describe_summary(summary))
    return summary


if __name__ == "__main__":
    run_stage("split", split_flow)
