"""Run by `make check-gpu-lock` in a fresh venv synced from requirements-gpu.lock: TensorFlow is a CUDA build
and the lock carries the CUDA runtime, cuDNN and cuBLAS wheels of the majors it was built for, where
TensorFlow looks for them (site-packages/nvidia/*/lib). No GPU is needed: only a box's driver is missing."""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

build = tf.sysconfig.get_build_info()
cuda_major = build["cuda_version"].split(".")[0]
wanted = {  # wheel -> (version major it must have, a library TensorFlow loads from it)
    "nvidia-cuda-runtime-cu12": (cuda_major, f"cuda_runtime/lib/libcudart.so.{cuda_major}"),
    "nvidia-cublas-cu12": (cuda_major, f"cublas/lib/libcublas.so.{cuda_major}"),
    "nvidia-cudnn-cu12": (build["cudnn_version"], f"cudnn/lib/libcudnn.so.{build['cudnn_version']}"),
}
site = Path(tf.__file__).resolve().parents[1] / "nvidia"
problems = [] if build["is_cuda_build"] else [f"TensorFlow {tf.__version__} is not a CUDA build"]
for wheel, (major, library) in wanted.items():
    try:
        version = importlib.metadata.version(wheel)
    except importlib.metadata.PackageNotFoundError:
        problems.append(f"{wheel} is not installed")
        continue
    if version.split(".")[0] != major:
        problems.append(f"{wheel} {version}: TensorFlow was built for major {major}")
    if not (site / library).is_file():
        problems.append(f"{site / library} is missing")
if problems:
    sys.exit("requirements-gpu.lock: " + "; ".join(problems))
print(f"TensorFlow {tf.__version__} (CUDA {build['cuda_version']}, cuDNN {build['cudnn_version']}) with its CUDA wheels: "
      + ", ".join(f"{wheel} {importlib.metadata.version(wheel)}" for wheel in wanted))
