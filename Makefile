# The two commands of the README: `make demo` and `make test`. Each creates (or reuses)
# its virtual environment in .venv; the stamp is keyed on pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bobx-installed-$(shell sha256sum pyproject.toml | cut -c1-16)
DEMO_STORE ?= ./demo-store

.PHONY: install test lint browser demo bench clean

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

# The report's browser test drives Debian's chromium through Playwright. Install it when we
# are root with apt-get (CI is); anywhere else, or if that fails, the test skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$${BOBX_CHROMIUM:-}" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the browser test (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	    >/dev/null 2>&1 || echo "note: could not install chromium; the browser test will skip"; \
	else echo "note: no chromium (apt-get install chromium, as root); the browser test will skip"; fi

test: lint browser
	$(BIN)/pytest

demo: $(STAMP)
	BOBX_STORE=$(DEMO_STORE) bash scripts/demo.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/store_read.py

clean:
	rm -rf $(VENV) $(DEMO_STORE) .pytest_cache .mypy_cache .ruff_cache
