"""Forward+backward timings of the core layers at LeNet-5 shapes (batch 128), with
GFLOP/s from the FLOP counts beside each case, and PyTorch's CPU build on the same
shapes in the same run when it is installed.

Run with ``pytest bench/`` (plain ``pytest`` collects only ``tests/``).
"""
import numpy
import pytest

import gpunet
from gpunet import nn

BATCH = 128

# name: (layer factory, input shape, FLOPs of forward + backward)
CASES = {
    # conv: 2 N K C R S OH OW FLOPs forward, twice that backward (dx and dW)
    "conv1_6@5x5_pad2": (lambda: nn.Conv2d(1, 6, 5, padding=2), (BATCH, 1, 28, 28),
                         3 * 2 * BATCH * 6 * 1 * 25 * 28 * 28),
    "conv2_16@5x5": (lambda: nn.Conv2d(6, 16, 5), (BATCH, 6, 14, 14),
                     3 * 2 * BATCH * 16 * 6 * 25 * 10 * 10),
    "maxpool_2x2": (lambda: nn.MaxPool2d(2), (BATCH, 6, 28, 28), 2 * BATCH * 6 * 28 * 28),
    "batchnorm2d": (lambda: nn.BatchNorm2d(16), (BATCH, 16, 10, 10), 12 * BATCH * 16 * 100),
}

TORCH_LAYERS = {
    "conv1_6@5x5_pad2": "Conv2d(1, 6, 5, padding=2)", "conv2_16@5x5": "Conv2d(6, 16, 5)",
    "maxpool_2x2": "MaxPool2d(2)", "batchnorm2d": "BatchNorm2d(16)",
}


def _record(benchmark, flops):
    benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.mean / 1e9


@pytest.mark.parametrize("name", list(CASES))
def test_gpunet_forward_backward(benchmark, name):
    gpunet.set_device("cpu")
    make, shape, flops = CASES[name]
    layer = make()
    x = numpy.random.default_rng(0).standard_normal(shape).astype(numpy.float32)
    dy = numpy.ones_like(layer(x))

    def step():
        layer(x)
        return layer.backward(dy)

    benchmark(step)
    _record(benchmark, flops)


@pytest.mark.parametrize("name", list(CASES))
def test_torch_forward_backward(benchmark, name):
    torch = pytest.importorskip("torch")
    layer = eval(f"torch.nn.{TORCH_LAYERS[name]}")  # noqa: S307 - names from the table above
    _, shape, flops = CASES[name]
    x = torch.randn(*shape, requires_grad=True)
    dy = torch.ones_like(layer(x))

    def step():
        x.grad = None
        layer(x).backward(dy)
        return x.grad

    benchmark(step)
    _record(benchmark, flops)
