# The README's two commands: `make run` (demo) and `make test`. Both set up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup run test lint fmt clean

setup: $(STAMP)

# torch==2.13.0 first: its CPU wheel is what the pyproject range then accepts as-is
# (a looser request would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: setup
	$(BIN)/stream-trainer demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check stream_trainer tests
	$(BIN)/ruff format --check stream_trainer tests

fmt: setup
	$(BIN)/ruff format stream_trainer tests

clean:
	rm -rf $(VENV) .demo checkpoints .pytest_cache .ruff_cache .hypothesis *.egg-info
