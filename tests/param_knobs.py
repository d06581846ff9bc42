"""The params fields core/params.py marks with `_knob`: how a stage runs, never what it produces."""

from __future__ import annotations

from pydantic import BaseModel

from skincancer.core.params import result_keys


def execution_knobs(section: type[BaseModel]) -> list[str]:
    """The section's fields that are not result keys: dvc.yaml must not declare them, so changing one
    makes no stage stale."""
    return [name for name in section.model_fields if name not in result_keys(section)]
