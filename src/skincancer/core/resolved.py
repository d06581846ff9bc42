"""The values params.yaml's 'auto' settings stand for, as a file for the stages that read them.

DVC compares a params key's text, so `shard.image_size: auto` would tie the shard stage to the word
and to train.backbone: swapping two backbones of one input size, or writing that size out, would
reshard every image. The resolve stage writes the values instead (data/resolved.json); the stages
depend on that file, and DVC reruns them only when a value changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from skincancer.core.atomic import atomic_write_text
from skincancer.core.backbones import BACKBONES
from skincancer.core.params import Params

# each key tracked through data/resolved.json, not as a param of the stages, with the value it resolves to
RESOLVED: dict[str, Callable[[Params], object]] = {
    "shard.image_size": lambda params: params.shard.image_size,
}


def resolved_values(params: Params) -> dict[str, object]:
    return {key: value_of(params) for key, value_of in RESOLVED.items()}


def describe(params: Params) -> str:
    backbone = params.train.backbone
    return (f"shard.image_size {params.shard.image_size} (train.backbone {backbone}'s input size is "
            f"{BACKBONES[backbone].default_size}; 'auto' stands for it)")


def write_resolved(params: Params, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(resolved_values(params), indent=2, sort_keys=True) + "\n")
