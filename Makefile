# Quick start: `make run` starts the daemon, `make test` runs the whole suite.
# Both create .venv on first use and refresh it when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test lint typecheck check bench clean systemd-tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $@

run: $(VENV)/.runtime
	$(BIN)/collector serve $(ARGS)

test: $(VENV)/.dev systemd-tools
	$(BIN)/python -m pytest $(ARGS)

# The unit checks (tests/systemd) need systemd-analyze: installed here when missing and we
# can (root with apt-get, as in CI); elsewhere those checks are skipped.
systemd-tools:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing systemd for systemd-analyze"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null \
	      || echo "note: could not install systemd; the unit checks will say so"; \
	  else \
	    echo "note: systemd-analyze missing (apt-get install systemd); unit checks skipped"; \
	  fi; }

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

check: lint typecheck test

bench: $(VENV)/.runtime
	$(BIN)/python -m bench.ingest $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
