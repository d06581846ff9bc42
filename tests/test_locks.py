"""The two locks agree: a GPU box runs the pins CI tests, plus only TensorFlow's CUDA wheels."""

import re

from project_copy import ROOT


def pins(lock: str) -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==([^ \\]+)", (ROOT / lock).read_text(), re.MULTILINE))


def test_the_gpu_lock_is_the_cpu_lock_plus_cuda_wheels():
    cpu, gpu = pins("requirements.lock"), pins("requirements-gpu.lock")
    assert {name: gpu[name] for name in cpu} == cpu  # every CPU pin, at the same version
    extra = set(gpu) - set(cpu)
    assert extra and all(name.startswith("nvidia-") for name in extra), sorted(extra)
    assert {"nvidia-cudnn-cu12", "nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12"} <= extra
