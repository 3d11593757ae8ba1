# make demo: create .venv, install gpunet, get Fashion-MNIST, train LeNet-5, print test accuracy.
# make test: create .venv, install gpunet with its test tools (and the PyTorch
# CPU build as a second oracle where it can be had), lint, run the suite.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= test
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install test lint clean demo fashion-mnist

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

# Debian's package where apt works (as root); otherwise gpunet downloads and
# verifies the files itself on first use.
fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null \
	    && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist \
	    || echo "apt-get failed: gpunet will download Fashion-MNIST instead"; fi

demo: $(BIN)/python fashion-mnist
	$(BIN)/pip install --quiet -e ".[train]"
	$(BIN)/gpunet train --model lenet5 --batch-norm --dataset fashion-mnist --epochs 10 \
	    --batch-size 64 --flip 0.5 --schedule exponential --decay 0.8 --device auto --out runs/demo

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis
