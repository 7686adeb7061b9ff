# Two entry points (README): `make run` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run simulate test lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[engine,gateway]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[dev,engine,gateway,plot,ray]'
	touch $@

# The main job: the gateway on its embedded default (two SmolLM2-135M engine replicas on CPU,
# cost router) at http://127.0.0.1:8000/v1. Ctrl-C drains and stops it.
run: $(VENV)/.run-installed
	$(VENV)/bin/shunter serve

# The simulator on its built-in scenario (a sample of the real Azure 2023 trace).
simulate: $(VENV)/.run-installed
	$(VENV)/bin/shunter simulate

test: $(VENV)/.test-installed
	$(PY) -m pytest

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
