# Two commands on a fresh machine:  `make run` (the main job) and `make test` (lint, types, tests).
# Both create .venv and install everything on first use. `make test-slow` runs the slow tests (a wheel
# installed into a fresh venv, a real `ray start` cluster, whole searches); CI runs both (.ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to 2.13.0, whose CPU wheel lies on this project's machines. Elsewhere, point pip
# at PyTorch's CPU index so it does not fetch the multi-GB CUDA build:
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: run test test-slow lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/scalesearch search

lint: $(BIN)/.installed
	$(BIN)/ruff check scalesearch tests benchmarks examples
	$(BIN)/ruff format --check scalesearch tests benchmarks examples
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# The venv's bin first on PATH: the cluster test runs the venv's `ray start`. TORCH_INDEX reaches the
# install test, which puts torch into a fresh venv the way this Makefile does.
test-slow: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" TORCH_INDEX="$(TORCH_INDEX)" $(BIN)/pytest -m slow

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
