# make test: create .venv, install gpunet with its test tools (and the PyTorch
# CPU build as a second oracle where it can be had), lint, run the suite.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= test
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/pip install --quiet "$(TORCH)" || echo "PyTorch unavailable: oracle tests will skip"

lint: install
	$(BIN)/ruff check gpunet tests bench examples

test: install lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis
