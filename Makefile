# The README's two commands: `make demo` and `make test`. Each sets up what it needs first:
# a .venv with the project and its extras, and the npm-pinned Azurite (never installed globally).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed

.PHONY: setup test lint docs demo clean sync

setup: $(PIP_STAMP) $(NPM_STAMP)

$(PIP_STAMP): pyproject.toml
	@echo "==> Python environment in $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,docs,postgres,samples,cli]'
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	@echo "==> Azurite from package-lock.json (npm ci)"
	@npm ci --no-audit --no-fund --loglevel=error
	@touch $@

LINT_PATHS := $(wildcard src tests benchmarks samples scripts)

lint: $(PIP_STAMP)
	@echo "==> sync code generated from async, ruff and mypy --strict"
	@$(PY) scripts/unasync.py --check
	@$(PY) -m ruff check $(LINT_PATHS)
	@$(PY) -m ruff format --check $(LINT_PATHS)
	@$(PY) -m mypy

# The suite runs in pytest-xdist workers: most of it waits on sockets (receive waits, lock
# expiries), so 4 workers keep 2 cores busy. Each worker starts its own emulator and Azurite
# and creates its own PostgreSQL database; tests that start whole process trees share one
# xdist_group so they run one at a time. `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 4

test: setup lint docs
	@echo "==> pytest ($(PYTEST_WORKERS) workers)"
	@$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

# The docs site, strictly: a broken link or a docstring mkdocstrings cannot read fails the build.
docs: $(PIP_STAMP)
	@echo "==> mkdocs build --strict (into site/, git-ignored)"
	@NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet --site-dir site

# Regenerate src/claimcheck_bus/_sync from src/claimcheck_bus/_async after editing the latter.
sync: $(PIP_STAMP)
	@$(PY) scripts/unasync.py

# `make demo ARGS=--keep-running` leaves the stack up and prints its URLs.
demo: setup
	@$(PY) samples/demo.py $(ARGS)

clean:
	rm -rf $(VENV) node_modules site .pytest_cache .mypy_cache .ruff_cache
