"""The orchestration side: one thin Prefect flow per DVC stage (`python -m flows.<stage>`), the pipeline
flow that runs `dvc repro`, and the temporary Prefect server they share. The library below never imports
Prefect.

Prefect reads its settings when it is first imported, so the package sets its defaults before any module
of it (or Prefect) is: the library's log records go to the Prefect run logs, and offline machines send no
telemetry.
"""

import os

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "skincancer")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
