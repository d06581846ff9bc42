"""One cross-validation fold's model, in a process of its own (`python -m skincancer.train.fold FOLDER FOLD ...`),
started by skincancer.train.cross_validation on the device its slot names (CUDA_VISIBLE_DEVICES).

FOLDER holds params.json (the TrainParams) and receives the fold's model.keras, its DVCLive record dvclive/ and
train_card.json, with the fold's own resumable state in FOLDER/.train-state. Every log line goes to stderr
as `LEVEL message`, which the parent relays to its own log prefixed with the fold.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger("skincancer.train.fold")  # not __name__: run as a script, that is __main__
PARAMS_FILE = "params.json"
MODEL_FILE, LIVE_DIR, CARD_FILE = "model.keras", "dvclive", "train_card.json"


def exit_with_parent() -> None:
    """The parent holds this process's stdin open while it lives and never writes to it: end of file means
    the parent is gone, however it ended (SIGKILL included), and the fold stops (SIGTERM, so the atomic
    outputs' cleanup runs) instead of training on for nobody, or beside the parent's next run."""

    def watch() -> None:
        while os.read(0, 4096):  # the descriptor itself: a thread blocked in sys.stdin would hold its lock at exit
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m skincancer.train.fold", description=__doc__)
    parser.add_argument("folder", type=Path, help="the fold's state folder, holding params.json")
    parser.add_argument("fold", type=int, help="the fold whose model this is: trained on the others, stopped on it")
    parser.add_argument("--folds", type=int, required=True, help="K, the number of folds in the shards")
    parser.add_argument("--shards", type=Path, required=True, help="the fold shards (data/shards)")
    parser.add_argument("--image-size", type=int, help="the size the shards must hold (shard.image_size)")
    parser.add_argument("--tensorboard", type=Path, help="TensorBoard logs of this fold (train.tensorboard)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    exit_with_parent()
    logging.basicConfig(format="%(levelname)s %(message)s")
    logging.getLogger("skincancer").setLevel(logging.INFO)
    # imported now, not above: the parent's death is watched for during TensorFlow's ~7 s import too
    from skincancer.core.params import TrainParams
    from skincancer.train.data import Roles
    from skincancer.train.train import train

    roles = Roles.for_fold(args.fold, args.folds)
    log.info("process %d, CUDA_VISIBLE_DEVICES=%r: training on %s, stopping on %s", os.getpid(),
             os.environ.get("CUDA_VISIBLE_DEVICES"), "+".join(roles.train), "+".join(roles.val))
    params = TrainParams.model_validate_json((args.folder / PARAMS_FILE).read_text())
    train(params, args.shards, args.folder / MODEL_FILE, args.folder / LIVE_DIR, image_size=args.image_size,
          tensorboard_dir=args.tensorboard, card_path=args.folder / CARD_FILE, roles=roles)


if __name__ == "__main__":
    main()
