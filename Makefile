# workbench — run `make help` for the targets.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WB     := $(BIN)/workbench
RUN    ?=
P      ?=

.DEFAULT_GOAL := help
.PHONY: help install lock demo test test-durations test-browser lab train evaluate annotate pipeline sweep bench bench-accuracy bench-annotate bench-transfer bench-sweep bench-datasets bench-pools bench-certify bench-annotate-cost bench-features bench-robustness bench-annotators bench-label-efficiency clean-venv

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  pass notebook parameters with P='-p epochs 3 -p model resnet18' and a run with RUN=runs/…"

# Pinned installs. $(LOCK) pins every package that the runtime dependencies and the dev extra
# of pyproject.toml need (the whole tree), plus pip and setuptools (the installer and the build
# backend), each to one version with the sha256 of every file PyPI has for that version. `make`
# installs exactly it: plain pip --require-hashes (a file whose hash is not in the lock, or a
# dependency missing from it, is an error), wheels only, then workbench itself with --no-deps.
# The stamp depends on the lock, so a changed lock reinstalls (pip only changes what differs).
# The lock is for CPython 3.11 (any 3.11.x: it is resolved for 3.11.0, which is why soupsieve stays
# at 2.x, whose successors need 3.11.5) on x86_64 Linux with glibc >= 2.28 (manylinux_2_28 wheels);
# the hashes of all of a version's files are there, other platforms' too, but only that target is
# resolved and tested. After changing the dependencies in pyproject.toml run `make lock`
# (tests/test_lock.py fails until the lock agrees): uv pip compile --generate-hashes resolves
# against PyPI alone (uv does not read pip's config, so this machine's extra indexes and
# find-links never reach the lock) and keeps the current pins where they still fit;
# LOCK_ARGS=--upgrade (or '--upgrade-package NAME') moves them on. uv is installed into .venv by
# `make lock` only; `make install` needs nothing but pip.
# The bench extra (torch) is deliberately not locked: the torch==2.13.0 measured here is the CPU
# build from a local wheel (pip's find-links /opt/wheels, capped by its constraint file), a file
# PyPI does not have; PyPI's torch 2.13.0 is another file that pulls the CUDA stack (GBs). Locking
# either would pin something this workbench does not run. `make bench` installs it on top, with
# the lock as a constraint file so that it cannot move a locked package.
LOCK       := requirements.lock
UV_VERSION := 0.13.9
LOCK_ARGS  ?=

$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; v = sys.version_info; sys.exit(None if v[:2] == (3, 11) else f"error: $(LOCK) is for Python 3.11, $(VENV) has {v[0]}.{v[1]}: make clean-venv, then make install PYTHON=python3.11")'
	@echo "installing $(LOCK) into $(VENV) (pip --require-hashes)"
	@$(BIN)/python -m pip install -qq --require-hashes --only-binary :all: -r $(LOCK)
	@$(BIN)/python -m pip install -qq --no-deps --no-build-isolation -e .
	@$(BIN)/python -m pip check >/dev/null || $(BIN)/python -m pip check
	@$(BIN)/python -c "from workbench.run.execute import ensure_kernel; ensure_kernel()"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install exactly requirements.lock, then workbench (once; again when the lock changes)

lock: ## regenerate requirements.lock from pyproject.toml (uv pip compile --generate-hashes; LOCK_ARGS=--upgrade)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -qq "uv==$(UV_VERSION)"
	printf 'pip\nsetuptools>=68\n' | $(BIN)/uv pip compile --quiet pyproject.toml - --extra dev \
		--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--only-binary :all: --custom-compile-command "make lock" -o $(LOCK) $(LOCK_ARGS)
	@echo "$(LOCK): $$(grep -c '^[A-Za-z0-9].*==' $(LOCK)) packages, $$(grep -c -- '--hash=sha256:' $(LOCK)) hashes"

demo: $(STAMP) ## train → evaluate → annotate on the embedded BloodMNIST; prints test ACC/AUC and the reports
	$(WB) pipeline --name demo $(P)

# The suite runs on pytest-xdist workers, one per core up to 4 (TEST_WORKERS=0: one process). Each worker
# takes whole files (--dist loadfile: a file's module fixtures, e.g. its tiny pipeline, are built once), in
# the order tests/conftest.py gives them: slowest first by tests/durations.md, so the workers end together.
# More than 4 workers would mostly repeat the session fixtures (each worker trains its own tiny runs).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST_XDIST  = -n $(TEST_WORKERS) $(if $(filter-out 0,$(TEST_WORKERS)),--dist loadfile --no-loadscope-reorder,)

test: $(STAMP) ## run the test suite (unit + end-to-end notebooks on a tiny real subset; TEST_WORKERS=N processes)
	$(BIN)/python -m pytest -q $(PYTEST_XDIST) $(PYTEST_ARGS)

test-durations: $(STAMP) ## run the whole suite once and write each test's time to tests/durations.md (commit it)
	@load="$$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"; \
	$(BIN)/python -m pytest -q $(PYTEST_XDIST) --durations=0 $(PYTEST_ARGS) 2>&1 | tee /tmp/workbench-test-durations.log; \
	$(BIN)/python tools/test_durations.py /tmp/workbench-test-durations.log --load "$$load" --workers $(TEST_WORKERS)

lab: $(STAMP) ## start JupyterLab on working copies of the notebooks (lab/, git-ignored: the tracked ones stay clean)
	@$(BIN)/python -m workbench.run.notebooks lab lab >/dev/null
	cd lab && ../$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root,) \
		00_explore.ipynb 05_pretrain.ipynb 10_train.ipynb 20_evaluate.ipynb 30_annotate.ipynb

test-browser: $(STAMP) ## only the real-browser tests (JupyterLab + headless Chromium via Playwright)
	$(BIN)/python -m pytest -q -m browser $(PYTEST_ARGS)

train: $(STAMP) ## run the train stage into a new run directory (P='-p NAME VALUE …')
	$(WB) run train $(P)

evaluate: $(STAMP) ## evaluate a trained run: make evaluate RUN=runs/…
	@test -n "$(RUN)" || { echo "error: give the run directory: make evaluate RUN=runs/<run>"; exit 2; }
	$(WB) run evaluate --run $(RUN) $(P)

annotate: $(STAMP) ## auto-annotate with a trained run: make annotate RUN=runs/…
	@test -n "$(RUN)" || { echo "error: give the run directory: make annotate RUN=runs/<run>"; exit 2; }
	$(WB) run annotate --run $(RUN) $(P)

pipeline: $(STAMP) ## train → evaluate → annotate into one new run directory (P='-p …')
	$(WB) pipeline $(P)

sweep: $(STAMP) ## every combination of comma lists, on Dask, cached (P='--name lr -p learning_rate 0.001,0.003 -p seed 0,1')
	$(WB) sweep $(P)

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	@grep -oE '^[A-Za-z0-9._-]+==[^ ]+' $(LOCK) > $(VENV)/lock-pins.txt  # pip reads hashes in -c as --require-hashes
	$(BIN)/python -m pip install -qq --no-build-isolation -e ".[bench]" -c $(VENV)/lock-pins.txt
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## train/infer img/s: Keras-on-JAX (fast, stock) vs PyTorch, papermill overhead → bench/results/perf.*
	$(BIN)/python -m bench.perf $(BENCH_ARGS)

bench-accuracy: $(STAMP) ## test ACC/AUC of a recipe over seeds → bench/results/accuracy.json (BENCH_ARGS='--recipe demo --seeds 0')
	$(BIN)/python -m bench.accuracy $(BENCH_ARGS)

bench-annotate: $(STAMP) ## auto-label precision/coverage + active learning vs random on BloodMNIST (ARGS=--quick: minutes)
	$(BIN)/python bench/annotate.py $(ARGS)

bench-transfer: $(STAMP) ## what init_from / freeze_backbone add: BloodMNIST classes split into source and target → bench/results/transfer.*
	$(BIN)/python -m bench.transfer $(BENCH_ARGS)

bench-sweep: $(STAMP) ## 4 demo runs on BreastMNIST: 1 worker vs the default workers, overhead, cached repeat → bench/results/sweep.*
	$(BIN)/python -m bench.sweep $(BENCH_ARGS)

bench-datasets: $(STAMP) ## full + demo recipes, untuned, 3 seeds on every embedded MedMNIST file vs the cards' baselines → bench/results/datasets.* (BENCH_ARGS='--datasets breastmnist --add')
	$(BIN)/python -m bench.datasets $(BENCH_ARGS)

bench-pools: $(STAMP) ## annotate pools streamed from disk: files/s and peak memory for 10,000 and 100,000 PNGs → bench/results/pools.*
	$(BIN)/python -m bench.pools $(BENCH_ARGS)

bench-annotate-cost: $(STAMP) ## what a new pool of 1,000 PNGs costs with an existing run, itemised (kernel, model load, predictions, features, map, export) → bench/results/annotate_cost.*
	$(BIN)/python -m bench.annotate_cost $(BENCH_ARGS)

bench-certify: $(STAMP) ## auto-accept on new images: shift-check false alarms (design/evaluation pools), OOD AUROCs, certification routes on real pools → bench/results/certify.* (BENCH_ARGS='--part routes')
	$(BIN)/python -m bench.certify $(BENCH_ARGS)

bench-robustness: $(STAMP) ## accuracy under each card's acquisition corruptions: recipes with/without photometric augmentation and test-time adaptation, 3 seeds → bench/results/robustness.* (resumable; BENCH_ARGS='--datasets breastmnist --recipes demo')
	$(BIN)/python -m bench.robustness $(BENCH_ARGS)

bench-features: $(STAMP) ## kNN / linear probe on a demo run's features, OOD AUROC (other modalities, corruptions), kNN agreement → bench/results/features.*
	$(BIN)/python -m bench.features $(BENCH_ARGS)

bench-annotators: $(STAMP) ## simulated annotators on BloodMNIST: CROWDLAB consensus vs majority vote, annotator-quality ranking → bench/results/annotators.*
	nice -n 10 $(BIN)/python -m bench.annotators $(BENCH_ARGS)

bench-label-efficiency: $(STAMP) ## supervised vs FixMatch vs SimCLR pretraining at 1/5/10/100 % of the labels, 3 seeds, resumable → bench/results/label_efficiency.* (BENCH_ARGS='--datasets bloodmnist --fractions 0.01,0.1 --methods supervised,semi --seeds 0')
	nice -n 10 $(BIN)/python -m bench.label_efficiency $(BENCH_ARGS)

clean-venv: ## remove the virtual environment
	rm -rf $(VENV)
