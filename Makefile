# lrpilot: every target builds its own .venv from the repository's files.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.lrpilot-installed

.PHONY: demo test lint bench clean postgres

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,search,lightning,hf,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# PostgreSQL server binaries for tests/test_search.py (a throw-away server per test run),
# from the Debian packages when missing; as root, or through sudo.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql \
	  || echo "warning: could not install PostgreSQL (apt-get install -y postgresql as root)" >&2; }

test: $(STAMP) postgres
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy  # configured in pyproject.toml [tool.mypy]: files, strict and not-yet-fixed modules

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
