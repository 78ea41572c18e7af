# Two commands for a newcomer: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
CONFIG := headway.local.toml

.PHONY: run test lint bench check clean

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
	$(PY) -m headway_collector.demo --example headway.example.toml --out $(CONFIG) --host $(HOST) --port $(PORT)
	$(VENV)/bin/headway-collector serve --config $(CONFIG) --host $(HOST) --port $(PORT)

test: $(VENV)/.dev
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff and mypy --strict over the SDK and the collector, configured in pyproject.toml
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check sdk collector
	$(VENV)/bin/mypy

bench: $(VENV)/.bench
	$(PY) -m benchmarks.run

check: $(VENV)/.collector
	$(VENV)/bin/headway-collector check --config headway.example.toml

clean:
	rm -rf $(VENV) *.egg-info headway.db* $(CONFIG)
