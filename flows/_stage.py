"""What every stage script shares: validate params.yaml and the stage's inputs before any work
(and before Prefect starts), then run the stage's flow."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import yaml
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows._params import stage_params
from flows._prefect_server import shared_api
from skincancer.core.atomic import restored_on_failure
from skincancer.core.params import OrchestrationParams, Params
from skincancer.ops.lifetime import die_with_dvc, exit_on_sigterm
from skincancer.ops.native_stderr import filter_native_stderr


def task_runner(orchestration: OrchestrationParams, threads: int) -> TaskRunner:
    """Where a stage's parallel units (downloads, image chunks) run: a thread pool here, or a Dask
    cluster through prefect-dask when params.orchestration names one (imported only then: dask is heavy)."""
    if not (orchestration.dask_address or orchestration.dask_workers):
        return ThreadPoolTaskRunner(max_workers=threads)
    from prefect_dask import DaskTaskRunner

    if orchestration.dask_address:
        return DaskTaskRunner(address=orchestration.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": orchestration.dask_workers, "threads_per_worker": 1})


def return_arrow_memory_to_the_system() -> None:
    """Arrow's default allocator (mimalloc) keeps what a stage's freed tables held for its own reuse, so a
    stage's resident peak grows with every intermediate table of its index; jemalloc, told to purge at once,
    hands it back. Where pyarrow was built without jemalloc, its default stays."""
    import pyarrow

    try:
        pyarrow.set_memory_pool(pyarrow.jemalloc_memory_pool())
        pyarrow.jemalloc_set_decay_ms(0)
    except NotImplementedError:
        pass


def outputs_only_the_stage_keeps(stage: str, dvc_yaml: Path = Path("dvc.yaml")) -> list[Path]:
    """The stage's `persist: true`, `cache: false` outputs: DVC leaves them in place, since its cache holds no
    copy to give back after a failure, so the stage itself must (outside a DVC project there are none)."""
    if not dvc_yaml.is_file():
        return []
    declared = yaml.safe_load(dvc_yaml.read_text())["stages"].get(stage, {})
    return [Path(path) for section in ("outs", "metrics", "plots") for entry in declared.get(section, [])
            if isinstance(entry, dict) for path, options in entry.items()
            if options and options.get("persist") and options.get("cache") is False]


def run_stage(stage: str, flow: Callable[[Params], object]) -> None:
    """Stage flows send no heartbeats unless PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set: a stage that dies
    fails its `dvc repro` (and the pipeline flow run, which keeps Prefect's heartbeats), and the heartbeat
    thread holds every stage's exit for up to a second. The outputs DVC leaves to the stage are set aside
    while the flow runs and put back if it fails, so a failed `dvc repro` loses none of them."""
    filter_native_stderr()  # before TensorFlow is imported: its C++ banners never reach the terminal
    logging.getLogger("skincancer").setLevel(logging.INFO)  # Prefect's root is WARNING: progress would be dropped
    params = stage_params(stage)
    die_with_dvc()  # `dvc repro` (or the pipeline) killed: this stage ends too, cleaning up its partial outputs
    exit_on_sigterm()
    return_arrow_memory_to_the_system()
    with (temporary_settings(set_defaults={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), shared_api(),
          restored_on_failure(outputs_only_the_stage_keeps(stage))):
        flow(params)
