# keyspan task runner: `make help` lists the targets. CI runs `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/keyspan/v1/*.proto)
export GRPC_VERBOSITY ?= ERROR

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-24s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install keyspan with its dev tools

serve: $(STAMP) ## run the all-in-one server on 127.0.0.1:7420 with data in ./keyspan-data
	$(VENV)/bin/keyspan serve

test: $(STAMP) proto-check lint ## the fast tests, then the quick integration workflows (what CI runs)
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q -m quick integration

test-integration-quick: $(STAMP) ## the real-process workflows, quick mode
	$(PY) -m pytest -q -m quick integration

test-integration: $(STAMP) ## every real-process workflow, full size
	KEYSPAN_INTEGRATION_FULL=1 $(PY) -m pytest -q integration

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench-quick: $(BENCH_STAMP) ## the perf suite, small and short (under 2 minutes); appends to integration/perf/history
	$(PY) -m integration.perf.bench baseline --quick
	$(PY) -m integration.perf.bench ycsb --quick
	$(PY) -m integration.perf.bench compare
	$(PY) -m integration.perf.bench targets

bench: $(BENCH_STAMP) ## the full perf suite: baseline table, YCSB A-F, a 3-node cluster, observability overhead, regression check, each target's verdict over the runs, ratios.png
	$(PY) -m integration.perf.bench baseline
	$(PY) -m integration.perf.bench ycsb
	$(PY) -m integration.perf.bench cluster
	$(PY) -m integration.perf.bench obs
	$(PY) -m integration.perf.bench compare
	$(PY) -m integration.perf.bench targets

lint: $(STAMP) ## ruff and formatting (the import layers are checked by tests/test_layers.py)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

proto: $(STAMP) ## regenerate the stubs in protos/keyspan/v1 from the .proto files
	$(PY) -m protos.gen protos

proto-check: $(STAMP) ## fail when the committed stubs differ from freshly generated ones
	$(PY) -m protos.gen --check protos

clean: ## remove the venv and caches (not ./keyspan-data)
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

.PHONY: help venv serve test test-integration-quick test-integration bench bench-quick lint proto proto-check clean
