"""The orchestration side: one thin Prefect flow per DVC stage (`python -m flows.<stage>`), the pipeline
flow that runs `dvc repro`, and the temporary Prefect server they share. The library below never imports
Prefect."""
