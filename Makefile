# Sluice: the two commands are `make demo` and `make test`. See README.md.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
INSTALLED := $(VENV)/.installed
# The JavaScript flagd evaluator the flag-canary tests check besides the Python one.
JS_TESTS := tests/js
JS_INSTALLED := $(JS_TESTS)/node_modules/.installed

.PHONY: help setup setup-js stack stack-down stack-status control-plane browser demo demo-smoke test test-unit lint format bench bench-smoke bench-check bench-profile screenshots clean

help:
	@echo "make demo        run Sluice on the embedded stack (web, worker, beat)"
	@echo "make test        lint, type-check and run the whole test suite on the real stack"
	@echo "make setup       create $(VENV)/ with the pinned requirements"
	@echo "make stack       start the embedded stack in the background; then: . .stack/env"
	@echo "make stack-down  stop it"
	@echo "make screenshots every dashboard page at 1280 and 390 px wide, in test-artifacts/screenshots/"
	@echo "make bench       run the benchmarks under bench/"
	@echo "make bench-smoke the reconcile benchmark at 1,000 objects; fails if Sluice is slower than kubectl"
	@echo "make bench-check every benchmark at a tiny size: proves each still runs (no figures)"
	@echo "make bench-profile CPU profile of a cold apply (1,000 and 10,000) and a no-op (10,000), in bench/results/"

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3

# Re-installs only when a requirements file changed since the last install.
$(INSTALLED): $(PY) requirements.txt requirements-dev.txt constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	@touch $@

# npm ci installs exactly what package-lock.json pins (Node >= 20 with npm).
$(JS_INSTALLED): $(JS_TESTS)/package.json $(JS_TESTS)/package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js >= 20) is required for tests/js"; exit 1; }
	cd $(JS_TESTS) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

setup: $(INSTALLED)

# Only the tests run flagd's JavaScript evaluator: the demo, the stack and the benchmarks need no Node.
setup-js: setup $(JS_INSTALLED)

control-plane:
	bash scripts/build-control-plane.sh >/dev/null

stack: setup
	$(PY) -m devstack up

stack-down: setup
	$(PY) -m devstack down

stack-status: setup
	$(PY) -m devstack status

demo: setup
	bash scripts/demo.sh

demo-smoke: setup
	bash scripts/demo-smoke.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy gitops

browser:
	bash scripts/ensure-system-packages.sh

# The unit tests run beside the integration tests (scripts/test.sh says why).
test: setup-js lint browser
	BIN=$(BIN) bash scripts/test.sh

test-unit: setup-js
	$(BIN)/pytest tests/unit

# Every dashboard page in Chromium at 1280 and 390 px: test-artifacts/screenshots/<page>-<width>.png
screenshots: setup-js browser
	$(BIN)/pytest tests/integration/test_screenshots.py

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The profile is not a benchmark: make bench-profile runs it.
bench: setup
	@for script in bench/*.py; do [[ $$script == bench/profile_reconcile.py ]] && continue; echo "== $$script"; $(PY) $$script; done

# cProfile of a reconcile in the process that runs it; PROFILE_ARGS='--py-spy PATH' samples instead.
bench-profile: setup
	$(PY) bench/profile_reconcile.py $(PROFILE_ARGS)

# CI runs this after the tests: a hot-path regression (a query or an upsert per
# object) shows up as Sluice falling behind kubectl on the same manifests.
bench-smoke: setup
	$(PY) bench/reconcile.py --sizes 1000 --cold-samples 3 --fail-if-slower

# CI runs this too: every benchmark at a tiny size, so one whose set-up broke does not stay broken unseen.
bench-check: setup
	$(PY) scripts/bench_check.py

# .stack holds the only record of a running stack's processes: kept when they could not be stopped.
clean:
	if [ -x $(PY) ] && [ -d .stack ]; then $(PY) -m devstack down; fi
	rm -rf $(VENV) .stack .pytest_cache .mypy_cache .ruff_cache $(JS_TESTS)/node_modules
