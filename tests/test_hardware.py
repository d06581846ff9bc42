"""hardware: the strategy registry's automatic choice and the precision policy."""

import json

import pytest

from skincancer.train.hardware import (
    REQUIRE_GPU,
    STRATEGIES,
    NoGPU,
    auto_strategy_name,
    check_devices,
    pick_strategy,
    precision_policy,
)


@pytest.mark.parametrize(
    ("tf_config", "gpus", "expected"),
    [
        (None, [], "one_device"),
        (None, ["/gpu:0"], "one_device"),
        (None, ["/gpu:0", "/gpu:1"], "mirrored"),
        ({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}, [], "multi_worker"),
        ({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}, ["/gpu:0", "/gpu:1"], "mirrored"),
    ],
)
def test_auto_picks_the_widest_strategy_the_machine_offers(monkeypatch, tf_config, gpus, expected):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert auto_strategy_name(gpus) == expected and expected in STRATEGIES


def test_a_broken_tf_config_names_the_variable(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        auto_strategy_name([])


def test_one_device_is_tensorflows_default_placement(monkeypatch):
    import tensorflow as tf

    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = pick_strategy("auto")
    assert strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1


def test_a_tf_config_the_strategy_ignores_makes_one_chief_worker_not_a_cluster(monkeypatch):
    """train.distribute one_device under a TF_CONFIG of three workers trains alone: it writes the outputs
    and keeps train.resume, rather than counting the workers TF_CONFIG names."""
    from skincancer.train.multi_worker import cluster_size, is_chief, worker_count

    addresses = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": 1}}))
    strategy = pick_strategy("one_device")
    assert cluster_size() == 3
    assert worker_count(strategy) == 1 and is_chief(strategy)


def test_mixed_precision_only_where_a_gpu_runs_it():
    assert precision_policy("auto", gpus=["/gpu:0"]) == "mixed_float16"
    assert precision_policy("auto", gpus=[]) == "float32"
    assert precision_policy("float32", gpus=["/gpu:0"]) == "float32"
    assert precision_policy("mixed_float16", gpus=[]) == "mixed_float16"


def test_a_model_built_while_other_threads_draw_random_numbers_gets_the_seeds_weights():
    """Under Prefect, websockets draws ping payloads from Python's global `random` on its own thread, at
    moments nobody controls; the model's initial weights must not depend on them."""
    import random
    import threading

    import numpy as np

    from skincancer.core.params import TrainParams
    from skincancer.train.hardware import seeded_construction
    from skincancer.train.models import build_classifier

    params = TrainParams(backbone="small_cnn", weights=None, seed=7)

    def draw_until(stop: threading.Event) -> None:
        while not stop.is_set():
            random.getrandbits(32)

    def weights(*, noise: bool) -> list[np.ndarray]:
        stop = threading.Event()
        drawer = threading.Thread(target=draw_until, args=(stop,))
        if noise:
            drawer.start()
        random.seed(7)
        with seeded_construction(params.seed):
            model = build_classifier(params, 32).model
        stop.set()
        if noise:
            drawer.join()
        return [w.numpy() for w in model.weights]

    quiet, noisy = weights(noise=False), weights(noise=True)
    assert len(quiet) == len(noisy) and all(np.array_equal(a, b) for a, b in zip(quiet, noisy, strict=True))


def test_devices_are_logged_and_a_required_gpu_that_is_missing_fails_at_once(monkeypatch, caplog):
    """This machine has no GPU: allowed, it says so; required (the nightly deployment), it refuses."""
    monkeypatch.delenv(REQUIRE_GPU, raising=False)
    with caplog.at_level("INFO", logger="skincancer.train.hardware"):
        assert check_devices() == []
    assert "sees no GPU: training on the CPU" in caplog.text
    monkeypatch.setenv(REQUIRE_GPU, "1")
    with pytest.raises(NoGPU, match=r"SKINCANCER_REQUIRE_GPU is set but TensorFlow .* sees no GPU: install the GPU "
                                    r"lock \(`make install GPU=1`\)"):
        check_devices()
