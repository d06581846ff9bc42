# The two commands of the README: `make demo` and `make test`. Everything installs from the lock.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
UV_VERSION := 0.13.8
# `make install GPU=1` (on a GPU box): TensorFlow with its CUDA runtime wheels, from their own lock
LOCK := $(if $(GPU),requirements-gpu.lock,requirements.lock)
STAMP := $(VENV)/.installed$(if $(GPU),-gpu)
# stage scripts (`python -m flows.<stage>`) must find the venv's python first
RUN := PATH="$(BIN):$$PATH" DVC_NO_ANALYTICS=1 TF_CPP_MIN_LOG_LEVEL=2

.PHONY: install demo test bench bench-scale bench-tables lock check-gpu-lock clean

install: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync --compile-bytecode --python $(VENV)/bin/python $(LOCK)
	$(VENV)/bin/uv pip install --python $(VENV)/bin/python --no-deps -e .
	rm -f $(VENV)/.installed $(VENV)/.installed-gpu
	touch $@

# the pipeline flow: `dvc repro` with one temporary Prefect server for every stage; ends with a summary
demo: install
	$(RUN) $(BIN)/python -m flows.pipeline

# every test, the ones marked `slow` (real `dvc repro` runs and Prefect servers) included: nothing is deselected
test: install
	$(BIN)/ruff check src flows tests benchmarks  # lint first ([tool.ruff] in pyproject.toml): seconds, not minutes
	$(RUN) $(BIN)/python -m pytest -n 2 --dist loadfile  # both cores; a module's tests stay in one worker, in order

# every benchmarks/<topic>.py (common.py holds their helpers, goals.py their goals); `make bench BENCH_ARGS=--quick` for small corpora.
# real_recipe.py, real_cv.py and real_full_size.py train for hours on 2 cores: run them on their own (docs/model-quality.md).
# Each run's raw figures and the machine's facts go to benchmarks/results/<date>-<host>.json;
# `make bench-tables` rewrites BENCHMARKS.md's tables from those files.
BENCH_SCRIPTS = $(filter-out benchmarks/common.py benchmarks/goals.py benchmarks/__init__.py benchmarks/real_recipe.py benchmarks/real_cv.py benchmarks/real_full_size.py benchmarks/tables.py,$(sort $(wildcard benchmarks/*.py)))
BENCH_ARGS ?=
SCALE_SIZES ?= 2000 8000 33126

bench: install
	$(RUN) $(BIN)/python benchmarks/common.py $(BENCH_ARGS) --command "make bench $(BENCH_ARGS)" $(BENCH_SCRIPTS)

# the whole pipeline on generated ISIC 2020-shaped corpora up to its 33,126 images: 20-25 min on 2 cores, after
# generating the corpora once (~15 min; 19 GB under $$TMPDIR/skincancer-bench-cache); ~30 GB more while it runs
bench-scale: install
	$(RUN) $(BIN)/python benchmarks/common.py --args "--sizes $(SCALE_SIZES)" --command "make bench-scale" benchmarks/scale.py

bench-tables: install
	$(BIN)/python benchmarks/tables.py

COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28

lock:
	$(COMPILE) --extra test --extra dev -o requirements.lock
	$(COMPILE) --extra test --extra dev --extra gpu -o requirements-gpu.lock

# CI: the GPU lock installs in a fresh venv and TensorFlow finds its CUDA wheels (no GPU needed for either)
check-gpu-lock: install
	rm -rf /tmp/skincancer-gpu-venv && $(BIN)/uv venv --quiet --python $(BIN)/python /tmp/skincancer-gpu-venv
	$(BIN)/uv pip sync --quiet --python /tmp/skincancer-gpu-venv/bin/python requirements-gpu.lock
	/tmp/skincancer-gpu-venv/bin/python .ci/check_gpu_install.py
	rm -rf /tmp/skincancer-gpu-venv

# the pipeline's outputs, TensorBoard logs, diff reports and exports: what git ignores in these folders. Files git
# tracks (dvc.lock, metrics.json, the cards, history and plot tables) stay as committed; so do .venv and .dvc/cache
OUTPUT_DIRS := data models reports logs diff-report exports

clean:
	git clean -fdX -- $(OUTPUT_DIRS)
