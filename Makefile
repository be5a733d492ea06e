# `make demo`, `make test` (everything) and `make check` (the fast tier: lint and the
# tests not marked slow). Each creates .venv on first use and reuses it afterwards
# (the stamp is refreshed only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test check docs docs-serve lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/forecast demo

test: $(STAMP)
	$(BIN)/ruff check forecast tests benchmarks notebooks
	$(BIN)/ruff format --check forecast tests benchmarks notebooks
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site
	$(BIN)/python -m pytest -q

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

check: $(STAMP)
	$(BIN)/ruff check forecast tests benchmarks notebooks
	$(BIN)/ruff format --check forecast tests benchmarks notebooks
	$(BIN)/python -m pytest -q -m "not slow"

format: $(STAMP)
	$(BIN)/ruff check --fix forecast tests benchmarks notebooks
	$(BIN)/ruff format forecast tests benchmarks notebooks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
