# deepgate: `make run` and `make test` do all the set-up on a fresh machine (Python 3.11 + git).
# Override the interpreter or the torch build, e.g.:
#   make run PYTHON=python3.11 TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"

PYTHON ?= python3
VENV   ?= .venv
# A CPU build of torch by default: small, and what the tests ran with. Installed before the
# project so that no dependency drags in a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# `make tune`: which pipeline, and how many trials.
PIPELINE ?= arrests
TRIALS   ?= 20
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check --quiet
export GX_ANALYTICS_ENABLED := False
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.DEFAULT_GOAL := help
.PHONY: help install dev browser postgres run transfer tune test test-fast audit lint format bench status serve ui clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=24"

# Reinstall only when the dependency declarations change.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	@echo "installing $(TORCH) and deepgate into $(VENV) (first time: a few minutes)"
	$(PIP) install $(TORCH)
	$(PIP) install -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -c constraints.txt -e ".[dev]"
	@touch $@

install: $(VENV)/.installed ## Create .venv and install deepgate (torch: $(TORCH))

dev: $(VENV)/.installed-dev ## install + test and lint tools

# The model-card test opens the card in headless Chromium: Debian's packages, installed only
# when missing (apt needs root: sudo is used when there is one and we are not root).
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
browser: ## Headless Chromium + chromedriver for the model-card test (apt, only when missing)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends chromium chromium-driver)

# The integration tier (tests/integration/) starts a throwaway PostgreSQL cluster with initdb and
# pg_ctl: Debian's server package, installed only when missing (Debian keeps them off PATH).
postgres: ## PostgreSQL server programs for the integration tier (apt, only when missing)
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends postgresql)

run: install ## Retrain the bundled pipelines (arrests, mnist) through every gate and print the summary
	$(BIN)/deepgate run arrests mnist

transfer: install ## The transfer-learning showcase: mnist-base (digits 0-4), then mnist-transfer (5-9, 10 labels/class)
	$(BIN)/deepgate run mnist-base mnist-transfer

tune: install ## Optuna search of PIPELINE's hyperparameters (TRIALS trials) -> tuned/PIPELINE.yaml
	$(BIN)/deepgate tune $(PIPELINE) --trials $(TRIALS)

test: dev browser postgres ## Run the test suite, integration tier included (all but the stress test)
	$(BIN)/python -m pytest -m "not stress"

test-stress: dev postgres ## Five retrain flows at once against the servers (~3 min; CI runs it after make test)
	$(BIN)/python -m pytest -m stress

test-fast: dev browser postgres ## Tests without the slow end-to-end ones
	$(BIN)/python -m pytest -m "not slow and not stress"

# Needs PyPI (pip-audit's vulnerability data): CI runs it beside `make test`.
audit: dev ## Known vulnerabilities in the pinned dependencies: fails on one with a fix (.ci/audit.py)
	$(BIN)/python .ci/audit.py --requirements constraints.txt --extra "$(TORCH)"

lint: dev ## ruff (lint + format check) and mypy on components/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: dev ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install ## Per-stage wall time of the pipeline (benchmarks/pipeline.py)
	$(BIN)/python benchmarks/pipeline.py

status: install ## Registered versions, aliases and verdicts
	$(BIN)/deepgate status

serve: install ## Serve arrests@champion on http://127.0.0.1:8000
	$(BIN)/deepgate serve arrests

ui: install ## MLflow UI on the embedded store
	$(BIN)/deepgate ui

clean: ## Remove local state (MLflow store, Prefect home, DVC cache/remote, data copies); keeps .venv
	rm -rf mlflow/mlflow.db mlflow/artifacts .prefect .dvc/cache .dvc/tmp .dvc-storage data/*/
