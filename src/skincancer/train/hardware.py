"""Which devices train: the tf.distribute strategy, numeric precision and determinism, from params.

A registry of strategy factories (train.distribute) so a GPU box, a multi-GPU box and a cluster
described by TF_CONFIG run the same code; 'auto' picks the widest one the machine offers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Callable, Iterator

import keras
import tensorflow as tf

from skincancer.train.multi_worker import KerasMultiWorkerMirrored, cluster_size

log = logging.getLogger(__name__)


# set (non-empty) where a GPU is expected, e.g. in the nightly deployment's job variables: no silent CPU training
REQUIRE_GPU = "SKINCANCER_REQUIRE_GPU"


class NoGPU(RuntimeError):
    """A GPU was expected (SKINCANCER_REQUIRE_GPU) and TensorFlow sees none."""


def _gpus() -> list[str]:
    return [device.name for device in tf.config.list_logical_devices("GPU")]


def check_devices() -> list[str]:
    """Log the devices TensorFlow trains on; fail at once where a GPU is required and there is none."""
    gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    build = tf.sysconfig.get_build_info()
    if gpus:
        log.info("TensorFlow %s sees %d GPU(s): %s", tf.__version__, len(gpus), ", ".join(gpus))
        return gpus
    if os.environ.get(REQUIRE_GPU):
        raise NoGPU(
            f"{REQUIRE_GPU} is set but TensorFlow {tf.__version__} (built for CUDA {build.get('cuda_version', 'none')}) "
            "sees no GPU: install the GPU lock (`make install GPU=1`), check `nvidia-smi`, or unset "
            f"{REQUIRE_GPU} to train on the CPU"
        )
    log.warning("TensorFlow %s sees no GPU: training on the CPU", tf.__version__)
    return []


def _one_device() -> tf.distribute.Strategy:
    """TensorFlow's default strategy: the first GPU if there is one, else the CPU; no input splitting."""
    return tf.distribute.get_strategy()


def _mirrored() -> tf.distribute.Strategy:
    """All local GPUs; without GPUs, all logical CPU devices (how tests run it on a laptop)."""
    devices = _gpus() or [device.name for device in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def _multi_worker() -> tf.distribute.Strategy:
    """The workers TF_CONFIG names, one replica per device of each (skincancer.train.multi_worker)."""
    return KerasMultiWorkerMirrored()


STRATEGIES: dict[str, Callable[[], tf.distribute.Strategy]] = {
    "one_device": _one_device,
    "mirrored": _mirrored,
    "multi_worker": _multi_worker,
}


def auto_strategy_name(gpus: list[str] | None = None) -> str:
    """A cluster in TF_CONFIG: all its workers; several local GPUs: all of them; else one device."""
    if cluster_size() > 1:
        return "multi_worker"
    if len(_gpus() if gpus is None else gpus) > 1:
        return "mirrored"
    return "one_device"


def pick_strategy(name: str) -> tf.distribute.Strategy:
    """train.distribute: a STRATEGIES name, or 'auto'."""
    strategy = STRATEGIES[auto_strategy_name() if name == "auto" else name]()
    log.info("train.distribute %s: %s over %d replica(s)", name, type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def precision_policy(setting: str, gpus: list[str] | None = None) -> str:
    """'auto': mixed_float16 where a GPU runs it (Tensor Cores, half the memory), float32 on CPU,
    where float16 is slower and would break CPU determinism."""
    if setting != "auto":
        return setting
    return "mixed_float16" if (_gpus() if gpus is None else gpus) else "float32"


def set_precision(setting: str) -> str:
    policy = precision_policy(setting)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def make_deterministic(seed: int) -> None:
    """Same seed => same weights and metrics on CPU. On GPU only the seeds are fixed: deterministic
    kernels cost speed there and not every op has one."""
    keras.utils.set_random_seed(seed)
    if not _gpus():
        tf.config.experimental.enable_op_determinism()


@contextlib.contextmanager
def seeded_construction(seed: int) -> Iterator[None]:
    """Keras gives every initializer and SeedGenerator created without a seed one drawn from Python's
    global `random`, which other threads draw from too, whenever they like (under Prefect: websockets'
    ping payloads for the events client). A model built meanwhile would get other weights; built here,
    its seeds come from a private stream of ``seed``."""
    from keras.src.random import seed_generator  # where Keras draws them (keras 3.x)

    shared = seed_generator.python_random
    seed_generator.python_random = random.Random(seed)
    try:
        yield
    finally:
        seed_generator.python_random = shared
