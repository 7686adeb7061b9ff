# Two entry points (README): `make run` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
# ARGS: more arguments for run, simulate and test, e.g. `make run ARGS="--port 8001"`,
# `make test ARGS="tests/core -x"` (tests/test_readme.py uses them)
ARGS   ?=

.PHONY: run simulate test lint clean clean-bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# then the simulator's compiled build (shunter/build.py; about a minute, once per source
# change; without a C compiler it says so in one line and stays pure Python)
$(VENV)/.run-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[engine,gateway,compile]'
	$(VENV)/bin/shunter build --if-possible
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[dev,engine,gateway,plot,ray,compile]'
	touch $@

# The main job: the gateway on its embedded default (two SmolLM2-135M engine replicas on CPU,
# cost router) at http://127.0.0.1:8000/v1. Ctrl-C drains and stops it.
run: $(VENV)/.run-installed
	$(VENV)/bin/shunter serve $(ARGS)

# The simulator on its built-in scenario (a sample of the real Azure 2023 trace).
simulate: $(VENV)/.run-installed
	$(VENV)/bin/shunter simulate $(ARGS)

test: $(VENV)/.test-installed
	$(PY) -m pytest $(ARGS)

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check src tests benchmarks

# What installs and tests leave in the tree, .bench/ aside (see clean-bench). Outside the tree
# they leave pytest's own temporary folders (/tmp/pytest-of-<user>, the last 3 runs, pruned by
# pytest), the SmolLM2 model cache (~/.cache/shunter/models, 94 MB, fetched once) and the
# engine's compiled attention kernel (~/.cache/shunter/kernels, 24 KB per source version).
clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -path ./.bench -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# .bench/: the competitors' venvs, models and wheels the external and compiled-build tests
# install on first use (vLLM's venv alone is 2.5 GB and slow to rebuild), and their runs and logs.
clean-bench:
	rm -rf .bench
