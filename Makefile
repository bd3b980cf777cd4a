# workbench — run `make help` for the targets.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WB     := $(BIN)/workbench
RUN    ?=
P      ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-browser lab train evaluate annotate pipeline bench bench-accuracy bench-annotate bench-transfer clean-venv

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  pass notebook parameters with P='-p epochs 3 -p model resnet18' and a run with RUN=runs/…"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -c "from workbench.execute import ensure_kernel; ensure_kernel()"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install workbench with its dependencies (once)

demo: $(STAMP) ## train → evaluate → annotate on the embedded BloodMNIST; prints test ACC/AUC and the reports
	$(WB) pipeline --name demo $(P)

test: $(STAMP) ## run the test suite (unit + end-to-end notebooks on a tiny real subset)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lab: $(STAMP) ## start JupyterLab with the "Python 3 (workbench)" kernel and the notebooks open
	cd notebooks && ../$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root,) \
		00_explore.ipynb 10_train.ipynb 20_evaluate.ipynb 30_annotate.ipynb

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

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## train/infer img/s: Keras-on-JAX (fast, stock) vs PyTorch, papermill overhead → bench/results/perf.*
	$(BIN)/python -m bench.perf $(BENCH_ARGS)

bench-accuracy: $(STAMP) ## test ACC/AUC of a recipe over seeds → bench/results/accuracy.json (BENCH_ARGS='--recipe demo --seeds 0')
	$(BIN)/python -m bench.accuracy $(BENCH_ARGS)

bench-annotate: $(STAMP) ## auto-label precision/coverage + active learning vs random on BloodMNIST (ARGS=--quick: minutes)
	$(BIN)/python bench/annotate.py $(ARGS)

bench-transfer: $(STAMP) ## what init_from / freeze_backbone add: BloodMNIST classes split into source and target → bench/results/transfer.*
	$(BIN)/python -m bench.transfer $(BENCH_ARGS)

clean-venv: ## remove the virtual environment
	rm -rf $(VENV)
