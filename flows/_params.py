"""What every stage script does first: validate params.yaml and the stage's inputs, or exit 2 naming
the problem, before any work (and, for the Prefect stages, before Prefect starts)."""

from __future__ import annotations

import os
import sys

from skincancer.core.params import Params, ParamsError, load_params, unused_settings
from skincancer.core.paths import MissingInput, require_inputs


def stage_params(stage: str) -> Params:
    try:
        params = load_params(os.environ.get("SKINCANCER_PARAMS", "params.yaml"))
        require_inputs(stage)
    except (ParamsError, MissingInput) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for warning in unused_settings(params):
        print(f"warning: {warning}", file=sys.stderr)
    return params
