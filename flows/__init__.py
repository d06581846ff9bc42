"""The orchestration side: one thin Prefect flow per DVC stage (`python -m flows.<stage>`), the pipeline
flow that runs `dvc repro`, and the temporary Prefect server they share. The library below never imports
Prefect.

Prefect reads its settings when it is first imported, so the package sets its defaults before any module
of it (or Prefect) is: the library's log records go to the Prefect run logs, and offline machines send no
telemetry.

The stage scripts run the library beside them, in `src/`: in a DVC experiment's copy of the project
(`.dvc/tmp/exps/...`, where `dvc exp run --queue` runs it) that is the copy's code, as queued, not the editable
install's, which is the workspace's and may have changed since.
"""

import os
import sys
from pathlib import Path

_LIBRARY = Path(__file__).resolve().parents[1] / "src"
if (_LIBRARY / "skincancer").is_dir():
    sys.path.insert(0, str(_LIBRARY))

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "skincancer")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
