# The two commands a new user needs: `make demo` and `make test`.
# Uses the active virtualenv when there is one, otherwise creates .venv here.
SHELL := /bin/bash
PYTHON_BOOT ?= python3

ifdef VIRTUAL_ENV
  VENV := $(VIRTUAL_ENV)
else
  VENV := $(CURDIR)/.venv
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mirrorgrad-installed

.PHONY: install demo test bench clean

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mirrorgrad_jax demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/mg_overhead.py

clean:
	rm -rf .pytest_cache build *.egg-info
