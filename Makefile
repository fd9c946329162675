# `make demo` and `make test` set up .venv on first use (Python 3.11 preferred), then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-all lint notebooks setup clean

demo: $(STAMP)
	$(BIN)/imgclf demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -n auto --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-all: $(STAMP)
	$(BIN)/python -m pytest

notebooks: $(STAMP)
	$(BIN)/python notebooks/execute.py

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache runs
