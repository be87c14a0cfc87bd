# The two commands a newcomer needs (see README):
#   make demo   set everything up, then run the main job (scenarios/collusion.toml)
#   make test   set everything up, then run the test suite (CI runs this; slow tests skipped)
# Both are idempotent: set-up steps are skipped when their inputs have not changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0; on these machines pip finds the CPU build locally. Elsewhere, to
# avoid the multi-GB CUDA packages, e.g.:
#   make TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" setup
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup demo lint test test-all test-fast coverage bench-gas compile clean

setup: $(VENV)/.stamp-deps node_modules/.stamp-npm

$(VENV)/.stamp-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "discofl-p2p needs Python >= 3.11; set PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.stamp-torch: $(VENV)/.stamp-python
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	touch $@

$(VENV)/.stamp-deps: $(VENV)/.stamp-torch pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

node_modules/.stamp-npm: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(BIN)/discofl-p2p scenario scenarios/collusion.toml

# The gates: lint and format (ruff), types (mypy; strict on trust/ and ml/).
lint: setup
	$(BIN)/ruff check discofl_p2p tests tools
	$(BIN)/ruff format --check discofl_p2p tests tools
	$(BIN)/mypy

# The suite under coverage (subprocesses included), then the figure per package.
# `test` skips the tests marked slow (it still runs whole small scenarios, in-process
# and one process per agent); `test-all` runs every test.
test: lint
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest -m "not slow" --cov --cov-report= $(PYTEST_ARGS)
	$(BIN)/python tools/coverage_by_package.py

test-all: lint
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest --cov --cov-report= $(PYTEST_ARGS)
	$(BIN)/python tools/coverage_by_package.py

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench-gas: setup
	$(BIN)/discofl-p2p bench gas

# Rewrites discofl_p2p/chain/artifacts/DiscoFLTask.json from contracts/DiscoFLTask.sol.
compile: node_modules/.stamp-npm
	node contracts/compile.cjs

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis .mypy_cache .ruff_cache .coverage .coverage.*
