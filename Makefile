# cloudopt_pipelines: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export CLOUDOPT_HOME ?= $(CURDIR)/.cloudopt
DAGSTER_HOME := $(CLOUDOPT_HOME)/dagster

.PHONY: demo test dev install install-dev lint format bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	# dagster-k8s for tests/test_deploy.py, without the kubernetes<37 it declares (pyproject.toml, k8s extra)
	$(BIN)/pip install --quiet --no-deps 'dagster-k8s>=0.29,<0.30'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

## demo: set up, then run the whole pipeline on the embedded demo data (2 accounts x 14 days; a second run keeps what is done)
demo: install
	$(BIN)/cloudopt demo

## test: install the dev dependencies, then run the test suite (tests start the servers they need)
test: install-dev
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## dev: the Dagster UI (and daemon) on the demo instance, http://127.0.0.1:3000
dev: install-dev
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || $(BIN)/python -c 'from cloudopt_pipelines.orchestration import ensure_instance; from cloudopt_pipelines.settings import load_settings; ensure_instance(load_settings())'
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## bench: the quick benchmarks, each against a baseline measured in the same run (under 5 minutes)
bench: install-dev
	$(BIN)/cloudopt bench --quick

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(CLOUDOPT_HOME)
