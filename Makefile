# The two commands of the README: `make demo` and `make test`. Each creates (or reuses)
# its virtual environment in .venv; the stamp is keyed on pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bobx-installed-$(shell sha256sum pyproject.toml | cut -c1-16)
DEMO_STORE ?= ./demo-store

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.bobx-installed-*
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy featcache evaluators

test: lint
	$(BIN)/pytest

demo: $(STAMP)
	BOBX_STORE=$(DEMO_STORE) bash scripts/demo.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/store_read.py

clean:
	rm -rf $(VENV) $(DEMO_STORE) .pytest_cache .mypy_cache .ruff_cache
