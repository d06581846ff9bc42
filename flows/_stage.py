"""What every stage script shares: validate params.yaml and the stage's inputs before any work
(and before Prefect starts), then run the stage's flow."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

# forward the library's log records to the Prefect run logs; no telemetry from offline machines
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "skincancer")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from skincancer.params import Params, ParamsError, load_params  # noqa: E402
from skincancer.paths import MissingInput, require_inputs  # noqa: E402


def run_stage(stage: str, flow: Callable[[Params], object]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(os.environ.get("SKINCANCER_PARAMS", "params.yaml"))
        require_inputs(stage)
    except (ParamsError, MissingInput) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    flow(params)
