"""DVC stage `train`: data/shards/ -> models/model.keras (best val AUC), models/history.csv and the
model's training card, models/train_card.json."""

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import run_stage
from skincancer.core import paths
from skincancer.core.params import Params


@flow(name="train")
def train_flow(params: Params) -> float:
    from skincancer.train.train import (
        train,  # imported here so a params error is reported before the ~7 s TensorFlow import
    )

    history = task(train, name="fit", cache_policy=NO_CACHE)(
        params.train, paths.SHARDS, paths.MODEL, paths.HISTORY,
        image_size=params.shard.image_size,
        tensorboard_dir=paths.TENSORBOARD if params.train.tensorboard else None, card_path=paths.TRAIN_CARD,
    )
    return float(history["val_auc"].max())


if __name__ == "__main__":
    run_stage("train", train_flow)
