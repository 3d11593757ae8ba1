# make demo: create .venv, install gpunet, get Fashion-MNIST, train LeNet-5, print test accuracy.
# make test: create .venv, install gpunet with its test tools (and the PyTorch
# CPU build as a second oracle where it can be had), lint, run the suite.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= test
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install test test-cuda-double test-threads lint clean demo fashion-mnist kernels-check gpu-check gpu-check-dry \
	scaling

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/pip install --quiet "$(TORCH)" || echo "PyTorch unavailable: oracle tests will skip"

lint: install
	$(BIN)/ruff check gpunet tests bench examples

# The whole suite, then the CUDA path without a GPU: the tests marked gpu (and the
# double's own) with the CuPy test double in CuPy's place (tests/cupy_double).
test: install lint
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-cuda-double test-threads gpu-check-dry

# float32 bounds must hold on any CPU, not only at one thread count: the float32
# distributed, kernel and batch-norm tests again with NumPy's BLAS and gpunet's own
# threads limited to one, then given every core.
test-threads:
	@for n in 1 $$(nproc); do echo "float32 tests on $$n thread(s)"; \
	    OMP_NUM_THREADS=$$n OPENBLAS_NUM_THREADS=$$n MKL_NUM_THREADS=$$n GPUNET_NUM_THREADS=$$n \
	    $(BIN)/python -m pytest -q -p no:cacheprovider -k float32 tests/test_distributed.py \
	    tests/test_kernels.py tests/test_normalization.py || exit 1; done

test-cuda-double:
	GPUNET_CUPY_DOUBLE=1 $(BIN)/python -m pytest -m "gpu or cupy_double"

# Every kernel must compile for Ampere and Hopper, in both precisions, without a
# single warning (register spills included), and its machine code must hold no
# out-of-line call (64-bit or floating-point division) and, for the convolution
# GEMMs, at least 40% FFMA: bench/sass_check.py prints the SASS table. The same files
# built as CuPy builds them (NVRTC) must have no stack, no spill, and the blocks per SM
# their __launch_bounds__ declare. No GPU needed; cuobjdump, nvdisasm and NVRTC come
# with the test extra.
NVCC ?= nvcc
kernels-check: install
	NVCC=$(NVCC) $(BIN)/python bench/sass_check.py

# On a machine with a GPU (bench/GPU.md): stages with time budgets, six minutes in
# all on an H200, a JSON report rewritten after each stage in bench/results and in
# $(OUT). Installs nothing: the GPU image has no network and no build backend.
OUT ?= /tmp/gpunet-gpu-check
gpu-check:
	PYTHONPATH=. $(PYTHON) bench/gpu_check.py --out "$(OUT)" $(GPU_CHECK_ARGS)

# The same script through the CuPy test double, without the sanitizer (in make test):
# the script itself must never be what fails on a GPU. Its training stage reads
# Debian's Fashion-MNIST where GPUNET_DATA names no other (without either it is skipped).
gpu-check-dry: install
	GPUNET_DATA="$${GPUNET_DATA:-/usr/share/datasets}" \
		$(BIN)/python bench/gpu_check.py --dry-run --out /tmp/gpunet-gpu-check-dry

# Data-parallel scaling on this machine (gpunet.distributed over mpiexec): training-step
# images/s and all-reduce times on 1 and 2 processes, saved in bench/results.
scaling: install
	$(BIN)/python bench/scaling.py --processes 1 2 --net lenet5 --steps 40
	$(BIN)/python bench/scaling.py --processes 1 2 --net alexnet_cifar --steps 10

# Debian's package where apt works (as root); otherwise gpunet downloads and
# verifies the files itself on first use.
fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null \
	    && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist \
	    || echo "apt-get failed: gpunet will download Fashion-MNIST instead"; fi

# each run its own folder: a second demo neither fails on the first one's files nor
# replaces them
demo: $(BIN)/python fashion-mnist
	$(BIN)/pip install --quiet -e ".[train]"
	$(BIN)/gpunet train --model lenet5 --batch-norm --dataset fashion-mnist --epochs 10 \
	    --batch-size 64 --flip 0.5 --schedule exponential --decay 0.8 --device auto \
	    --out runs/demo-$$(date +%Y%m%d-%H%M%S)

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis
