"""DVC stage `evaluate`: model + shards -> metrics.json, reports/ (threshold frozen on val) and the
evaluated model card, models/card.json."""

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows._stage import run_stage
from skincancer.core import paths
from skincancer.core.params import Params


@flow(name="evaluate")
def evaluate_flow(params: Params) -> dict:
    from skincancer.evaluate.evaluate import (
        evaluate,  # imported here so a params error is reported before the ~7 s TensorFlow import
    )

    metrics = task(evaluate, name="evaluate-model", cache_policy=NO_CACHE)(
        params.evaluate, paths.MODEL, paths.SHARDS, paths.METRICS, paths.REPORTS,
        live_dir=paths.LIVE, shown_params=params.reported(), train_card_path=paths.TRAIN_CARD,
        card_path=paths.CARD,
    )
    create_markdown_artifact(
        key="skincancer-report", markdown=(paths.REPORTS / "report.md").read_text(), description="reports/report.md"
    )
    return metrics


if __name__ == "__main__":
    run_stage("evaluate", evaluate_flow)
