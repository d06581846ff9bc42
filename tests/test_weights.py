"""weights: pretrained weights load exactly, or fail with a WeightsError that says what to change."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras.src.applications import mobilenet_v3, nasnet
from keras.src.backend import config as keras_config
from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

from skincancer.train.weights import (
    WeightsError,
    WeightsMismatch,
    WeightsUnavailable,
    imagenet_backbone,
    load_weights_file,
)


def mobilenet_v2(size: int = 32, include_top: bool = False, alpha: float = 1.0) -> keras.Model:
    """A real keras.applications backbone, random init, small enough to build in a second."""
    shape = (size, size, 3)
    return keras.applications.MobileNetV2(include_top=include_top, weights=None, input_shape=shape, alpha=alpha)


def save_legacy_h5(model: keras.Model, path: Path) -> Path:
    """The Keras 2 layout of keras.applications' own *_notop.h5 files."""
    with h5py.File(path, "w") as file:
        save_weights_to_hdf5_group(file, model)
    return path


def assert_same_weights(expected: keras.Model, actual: keras.Model) -> None:
    assert len(expected.weights) == len(actual.weights)
    for want, got in zip(expected.weights, actual.weights, strict=True):
        np.testing.assert_array_equal(want.numpy(), got.numpy(), err_msg=want.path)


def differs(first: keras.Model, second: keras.Model) -> bool:
    return any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first.weights, second.weights, strict=True))


@pytest.fixture(scope="module")
def refusing_backbone() -> keras.Model:
    """Shared by the tests that expect a refusal: what a failed load leaves in it is never looked at."""
    return mobilenet_v2()


def test_missing_file_names_path_and_backbone(tmp_path, refusing_backbone):
    path = tmp_path / "efficientnetb0_notop.h5"
    with pytest.raises(WeightsMismatch, match="does not exist") as raised:
        load_weights_file(refusing_backbone, path, "mobilenet_v2")
    assert str(path) in str(raised.value)
    assert "mobilenet_v2" in str(raised.value)


def test_keras3_weights_file_round_trips(tmp_path):
    saved, target = mobilenet_v2(), mobilenet_v2()
    assert differs(saved, target)
    saved.compile(optimizer="adam", loss="mse")
    saved.optimizer.build(saved.trainable_variables)  # a compiled model's file holds optimizer state too
    path = tmp_path / "mobilenet_v2.weights.h5"
    saved.save_weights(path)
    load_weights_file(target, path, "mobilenet_v2")
    assert_same_weights(saved, target)


def test_legacy_h5_file_written_at_another_size_loads(tmp_path):
    # keras' *_notop.h5 files come from 224 px models; no-top weights do not depend on the image size
    saved, target = mobilenet_v2(64), mobilenet_v2(32)
    assert differs(saved, target)
    path = save_legacy_h5(saved, tmp_path / "mobilenet_v2_notop.h5")
    load_weights_file(target, path, "mobilenet_v2")
    assert_same_weights(saved, target)


def mobilenet_v3_small() -> keras.Model:
    return keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))


@pytest.mark.parametrize(
    ("other", "suffix"),
    [
        pytest.param(mobilenet_v3_small, ".weights.h5", id="other-architecture-keras3"),
        pytest.param(mobilenet_v3_small, ".h5", id="other-architecture-legacy"),
        pytest.param(lambda: mobilenet_v2(alpha=0.35), ".weights.h5", id="other-width-keras3"),
        pytest.param(lambda: mobilenet_v2(alpha=0.35), ".h5", id="other-width-legacy"),
        pytest.param(lambda: mobilenet_v2(include_top=True), ".h5", id="with-top-legacy"),
    ],
)
def test_weights_of_another_backbone_are_refused(tmp_path, refusing_backbone, other, suffix):
    path = tmp_path / f"other{suffix}"
    source = other()
    if suffix == ".h5":
        save_legacy_h5(source, path)
    else:
        source.save_weights(path)
    with pytest.raises(WeightsMismatch, match="does not fit") as raised:
        load_weights_file(refusing_backbone, path, "mobilenet_v2")
    assert str(path) in str(raised.value)
    assert "mobilenet_v2" in str(raised.value)


def test_with_top_keras3_file_is_refused_although_keras_loads_it(tmp_path, refusing_backbone):
    # keras ignores the extra `predictions` layer; only the variable count gives it away
    path = tmp_path / "with_top.weights.h5"
    mobilenet_v2(include_top=True).save_weights(path)
    refusing_backbone.load_weights(path)
    with pytest.raises(WeightsMismatch, match="holds 262 variables, the backbone has 260"):
        load_weights_file(refusing_backbone, path, "mobilenet_v2")


class Stack(keras.layers.Layer):
    """Sublayers in nested lists: keras only warns when the file lacks their group."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [[keras.layers.Dense(4)], [keras.layers.Dense(4)]]

    def call(self, x):
        for group in self.blocks:
            for block in group:
                x = block(x)
        return x


def stack_model() -> keras.Model:
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2)(Stack()(inputs)))


def test_layers_keras_skips_with_a_warning_are_refused(tmp_path):
    path = tmp_path / "stack.weights.h5"
    stack_model().save_weights(path)
    with h5py.File(path, "a") as file:  # the layout of files from keras before nested containers were saved
        file.move("layers/stack/blocks/container", "layers/stack/blocks/old")
        file.move("layers/stack/blocks/container_1", "layers/stack/blocks/old_1")
    with pytest.warns(UserWarning, match="Skipping nested container"):
        stack_model().load_weights(path)  # same variable count, two layers left at random init, no error
    with pytest.raises(WeightsMismatch, match="random init"):
        load_weights_file(stack_model(), path, "stack")


@pytest.mark.parametrize("name", ["junk.weights.h5", "junk.h5"])
def test_unreadable_file_is_refused(tmp_path, refusing_backbone, name):
    path = tmp_path / name
    path.write_bytes(b"not an HDF5 file")
    with pytest.raises(WeightsMismatch, match="does not fit"):
        load_weights_file(refusing_backbone, path, "mobilenet_v2")


def test_file_that_is_not_h5_is_refused(tmp_path, refusing_backbone):
    path = tmp_path / "backbone.keras"
    path.write_bytes(b"")
    with pytest.raises(WeightsMismatch, match=r"\.weights\.h5"):
        load_weights_file(refusing_backbone, path, "mobilenet_v2")


class WeightsHandler(BaseHTTPRequestHandler):
    """/junk/...: 200 with bytes that fail keras' hash check; anything else: 404."""

    def do_GET(self):
        if not self.path.startswith("/junk/"):
            self.send_error(404)
            return
        body = b"this is not the weights file"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def weights_server(monkeypatch) -> Iterator[str]:
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # urllib would send loopback traffic to a configured proxy
    server = ThreadingHTTPServer(("127.0.0.1", 0), WeightsHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def empty_keras_cache(monkeypatch, tmp_path) -> Path:
    """keras reads KERAS_HOME once at import; its cache dir is this module constant after that."""
    home = tmp_path / "keras_home"
    home.mkdir()  # get_file falls back to /tmp/.keras when the home is not writable, or missing
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))
    return home / "models"


IMAGENET_BELOW_224 = pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")


@IMAGENET_BELOW_224
@pytest.mark.parametrize(("route", "failure"), [("missing", "404"), ("junk", "corrupted")])
def test_failed_imagenet_download_says_how_to_work_offline(
    monkeypatch, weights_server, empty_keras_cache, route, failure
):
    monkeypatch.setattr(mobilenet_v3, "BASE_WEIGHT_PATH", f"{weights_server}/{route}/")
    with pytest.raises(WeightsUnavailable) as raised:
        imagenet_backbone("mobilenet_v3_small", "MobileNetV3Small", (32, 32, 3))
    message = str(raised.value)
    assert "mobilenet_v3_small" in message
    assert failure in message
    assert f"{weights_server}/{route}/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5" in message
    assert str(empty_keras_cache) in message
    assert "train.weights: path/to/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5" in message


@IMAGENET_BELOW_224
def test_unreachable_server_is_unavailable(monkeypatch, empty_keras_cache):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the download: connection refused
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(mobilenet_v3, "BASE_WEIGHT_PATH", f"http://127.0.0.1:{port}/")
    with pytest.raises(WeightsUnavailable, match="Connection refused") as raised:
        imagenet_backbone("mobilenet_v3_small", "MobileNetV3Small", (32, 32, 3))
    assert "mobilenet_v3_small" in str(raised.value)
    assert "train.weights" in str(raised.value)


def test_nasnet_mobile_below_224_px_goes_to_the_download(monkeypatch, weights_server, empty_keras_cache):
    # Keras 3 accepts any size >= 32 for no-top NASNetMobile imagenet weights: no shape error, a download
    url = f"{weights_server}/missing/nasnet_mobile_no_top.h5"
    monkeypatch.setattr(nasnet, "NASNET_MOBILE_WEIGHT_PATH_NO_TOP", url)
    with pytest.raises(WeightsUnavailable, match="nasnet_mobile"):
        imagenet_backbone("nasnet_mobile", "NASNetMobile", (96, 96, 3))


def test_image_size_keras_refuses_is_a_settings_error_not_a_download_error(empty_keras_cache):
    with pytest.raises(WeightsError) as raised:
        imagenet_backbone("inception_v3", "InceptionV3", (64, 64, 3))
    assert not isinstance(raised.value, WeightsUnavailable)
    message = str(raised.value)
    assert "inception_v3" in message
    assert "64x64" in message
    assert "75x75" in message  # keras' own minimum, from the original error
    assert "shard.image_size" in message


DOWNLOAD_SCRIPT = """
import sys
from keras.src.applications import mobilenet_v2
mobilenet_v2.BASE_WEIGHT_PATH = sys.argv[1]
from skincancer.train.weights import imagenet_backbone
backbone = imagenet_backbone("mobilenet_v2", "MobileNetV2", (32, 32, 3))
print(sum(float(weight.numpy().sum()) for weight in backbone.weights))
"""


@IMAGENET_BELOW_224
def test_two_processes_wanting_the_same_imagenet_weights_download_them_once(tmp_path, monkeypatch):
    """Side-by-side experiments on a fresh machine: keras writes its download in place, so a second process would
    fetch it again over the first one's half-written file. The second waits and reads the finished file."""
    weights = save_legacy_h5(mobilenet_v2(), tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
    requests = []

    class SlowWeights(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = weights.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            time.sleep(1.5)  # mid-download: the other process has long asked for the file by now
            self.wfile.write(body[len(body) // 2:])

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowWeights)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras_home"), "no_proxy": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        processes = [subprocess.Popen([sys.executable, "-c", DOWNLOAD_SCRIPT, f"http://127.0.0.1:{server.server_port}/"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2)]
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        server.shutdown()
        server.server_close()
    assert [process.returncode for process in processes] == [0, 0], [error[-2000:] for _, error in outputs]
    assert len(requests) == 1, requests
    assert outputs[0][0].splitlines()[-1] == outputs[1][0].splitlines()[-1]  # both built on the same, whole file
