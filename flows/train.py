"""DVC stage `train`: data/shards/ -> models/model.keras (best val AUC), the DVCLive record of its epochs
(models/dvclive/, written as they end) and the model's training card, models/train_card.json. Fold shards
(split.folds): one model per fold in models/folds/, each in its own process on the slots
orchestration.fold_devices gives, and their ensemble as models/model.keras; without folds models/folds/ is
empty."""

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import run_stage
from skincancer.core import paths
from skincancer.core.atomic import atomic_dir
from skincancer.core.params import Params


@flow(name="train")
def train_flow(params: Params) -> float:
    # imported here so a params error is reported before the ~7 s TensorFlow import
    from skincancer.train.cross_validation import fold_slots, train_folds
    from skincancer.train.data import read_shard_manifest
    from skincancer.train.train import train

    tensorboard_dir = paths.TENSORBOARD if params.train.tensorboard else None
    if "folds" in read_shard_manifest(paths.SHARDS):
        history = task(train_folds, name="fit-folds", cache_policy=NO_CACHE)(
            params.train, paths.SHARDS, paths.MODELS, paths.LIVE, paths.TRAIN_CARD, params.shard.image_size,
            fold_slots(params.orchestration.fold_devices), tensorboard_dir=tensorboard_dir,
        )
    else:
        history = task(train, name="fit", cache_policy=NO_CACHE)(
            params.train, paths.SHARDS, paths.MODEL, paths.LIVE,
            image_size=params.shard.image_size, tensorboard_dir=tensorboard_dir, card_path=paths.TRAIN_CARD,
        )
        with atomic_dir(paths.FOLDS_DIR):
            pass  # an out of the stage (dvc.yaml): one model has no members
    return float(history["val_auc"].max())


if __name__ == "__main__":
    run_stage("train", train_flow)
