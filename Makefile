# Two commands for a newcomer: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
CONFIG := headway.local.toml

.PHONY: run test lint bench check clean compile dist

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.collector: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[collector]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.collector

$(VENV)/.bench: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@ $(VENV)/.dev $(VENV)/.collector

run: $(VENV)/.collector
	$(PY) -m headway_collector.demo --example headway.example.toml --out $(CONFIG) --host $(HOST) --port $(PORT) --serve

# The projection's pure core, compiled with mypyc from the same typed source where a C compiler
# exists; without one (or if mypyc fails) it runs interpreted. headway_collector.model says which.
compile: $(VENV)/.dev
	@if command -v cc >/dev/null 2>&1; then cd collector && ../$(PY) compile_core.py; \
	else echo "projection core: no C compiler, it runs interpreted"; fi

# The core's own property tests: run a second time interpreted when the first run was compiled.
INTERPRETED_TESTS := tests/collector/test_truth.py tests/collector/test_store_contract.py \
	tests/collector/test_model_edges.py tests/collector/test_labels.py tests/collector/test_growth.py \
	tests/collector/test_funnel.py

# The whole suite as the core is built, then the core's own property tests interpreted too. Most
# tests wait on real servers, processes and sockets, so they run in PYTEST_WORKERS processes
# (pytest-xdist; measured on 2 cores: 773 tests in 213 s with 3, 565 s with 1). `PYTEST_WORKERS=0`
# runs them in one process.
PYTEST_WORKERS ?= 3
test: $(VENV)/.dev compile
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)
	@if $(PY) -c "import sys, headway_collector.model as m; sys.exit(not m.COMPILED)"; then \
	  echo "the core's tests again, interpreted (HEADWAY_INTERPRETED=1):"; \
	  HEADWAY_INTERPRETED=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) $(INTERPRETED_TESTS); fi

# ruff and mypy --strict over the SDK and the collector, configured in pyproject.toml
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check sdk collector
	$(VENV)/bin/mypy

bench: $(VENV)/.bench
	$(PY) -m benchmarks.run

# A wheel of this repository in dist/ (no package index publishes headway): `pip install
# dist/headway-*.whl` gives the SDK alone, `'dist/headway-...whl[collector]'` the collector too.
dist: | $(VENV)/bin/python
	$(PY) -m pip wheel -q --no-deps -w dist .

check: $(VENV)/.collector
	$(VENV)/bin/headway-collector check --config headway.example.toml

clean:
	rm -rf $(VENV) *.egg-info headway.db* $(CONFIG) build dist collector/build collector/headway_collector/model/*.so
