# skyserve — the front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test test-fast install-run install-test system-deps models bench fuzz load lint fmt up down clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamps re-run pip only when pyproject.toml changes.
$(VENV)/.run-installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[api,worker,local]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[api,worker,trainer,local,dev]"
	touch $@

install-run: $(VENV)/.run-installed ## Install what `make run` needs (no TensorFlow)

install-test: $(VENV)/.test-installed ## Install everything, trainer and test tools included

SYSTEM_PACKAGES := stellarium-data docker-compose chromium
# apt waits up to 5 minutes for a lock held by another apt (unattended upgrades) instead
# of failing at once; .ci/run retries the whole target on CI and fails the run after that.
APT_LOCK := -o DPkg::Lock::Timeout=300

system-deps: ## Debian packages for the full suite: stellarium-data (photos), docker-compose, chromium (browser tests; needs root)
	@if dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then echo "system packages present"; \
	else apt-get $(APT_LOCK) update -qq && DEBIAN_FRONTEND=noninteractive apt-get $(APT_LOCK) install -y -qq --no-install-recommends $(SYSTEM_PACKAGES); fi

run: install-run ## Run Redis (embedded unless REDIS_URL), a worker and the API on :8000
	$(VENV)/bin/skyserve-local

test: install-test ## Run the full test suite (real Redis, real workers, real training)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install-test ## Run the suite without the slow tests
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

models: install-test ## Rebuild the committed default models (see docs/training.md)
	$(VENV)/bin/skyserve-train inclination --models-dir models
	$(VENV)/bin/skyserve-train morphology --models-dir models
	$(VENV)/bin/skyserve-train object-type --models-dir models
	$(VENV)/bin/skyserve-train rejection --models-dir models

bench: install-test ## Run the benchmarks (figures printed, baselines in the same run)
	$(PY) bench/limit.py
	$(PY) bench/preprocess.py
	$(PY) bench/inference.py
	$(PY) bench/peer.py
	$(PY) bench/batch_throughput.py
	$(PY) bench/latency.py
	$(PY) bench/catalog.py
	$(PY) bench/scaling.py
	$(PY) bench/api_memory.py
	$(PY) bench/redis_memory.py
	$(PY) bench/recovery.py

fuzz: install-test ## Schemathesis, every check, against the live API and a worker (>= 1,000 cases)
	$(PY) -m tests.fuzz.openapi_fuzz --max-examples $${FUZZ_EXAMPLES:-100}

load: install-test ## Load: N clients for T seconds against a local deployment, keys on (bench/load.py)
	$(PY) bench/load.py --clients $${CLIENTS:-4} --seconds $${SECONDS_:-30}

lint: install-test ## Static checks
	$(PIP) install --quiet ruff mypy
	$(VENV)/bin/ruff check shared services tests bench
	$(VENV)/bin/mypy shared --ignore-missing-imports

fmt: install-test ## Format the code
	$(PIP) install --quiet ruff
	$(VENV)/bin/ruff format shared services tests bench

up: ## docker compose up (API on :8000); WORKERS=N scales the CPU workers
	docker compose up --build --scale worker=$${WORKERS:-1}

down: ## docker compose down
	docker compose down

clean: ## Remove the virtual environment, caches and local Redis data
	rm -rf $(VENV) .pytest_cache var build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
