"""Empty tensors: a batch of 0 (and 0 channels or filters where that means something)
through every layer and op, on the CPU accelerators, the textbook xp path and the CUDA
launchers, which must return the textbook path's shapes and values (empty outputs,
zero parameter gradients) without launching a kernel: a zero grid is an error on
the host's arithmetic (split-K, run lengths) before it is one on the GPU."""
import numpy
import pytest

from gpunet import backend, nn, ops
from gpunet.cuda import runtime

from . import cuda_emulator
from .helpers import assert_close

LAYERS = {
    "conv": lambda: nn.Conv2d(3, 4, 3, padding=1),
    "conv_no_bias": lambda: nn.Conv2d(3, 4, 3, stride=2, bias=False),
    "max_pool": lambda: nn.MaxPool2d(2),
    "avg_pool": lambda: nn.AvgPool2d(3, stride=2, padding=1),
    "batch_norm_eval": lambda: nn.BatchNorm2d(3).eval(),
    "flatten": lambda: nn.Flatten(),
    "relu": lambda: nn.ReLU(),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_on_an_empty_batch(xp, name):
    """Forward and backward of each layer on (0, 3, 6, 6): empty outputs of the right
    shape, zero parameter gradients (the textbook sums over no values)."""
    layer = LAYERS[name]()
    x = xp.asarray(numpy.zeros((0, 3, 6, 6), "float32"))
    y = layer(x)
    expected = {"conv": (0, 4, 6, 6), "conv_no_bias": (0, 4, 2, 2), "max_pool": (0, 3, 3, 3),
                "avg_pool": (0, 3, 3, 3), "flatten": (0, 108)}.get(name, (0, 3, 6, 6))
    assert tuple(y.shape) == expected
    dx = layer.backward(xp.zeros_like(y))
    assert tuple(dx.shape) == (0, 3, 6, 6)
    for p in layer.parameters():
        assert not backend.to_numpy(p.grad).any(), p.name


def test_flatten_of_an_empty_batch_keeps_the_feature_size(xp):
    """As PyTorch: (0, 16, 5, 5) -> (0, 400), and back."""
    flatten = nn.Flatten()
    y = flatten(xp.zeros((0, 16, 5, 5), "float32"))
    assert tuple(y.shape) == (0, 400)
    assert tuple(flatten.backward(y).shape) == (0, 16, 5, 5)


def test_a_model_on_an_empty_batch(xp):
    """LeNet-like: conv, batch norm (eval), pooling, flatten, linear, on no images."""
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(16 * 5 * 5, 10)).eval()
    y = model(xp.zeros((0, 1, 28, 28), "float32"))
    assert tuple(y.shape) == (0, 10)
    assert tuple(model.backward(xp.zeros_like(y)).shape) == (0, 1, 28, 28)
    assert not any(backend.to_numpy(p.grad).any() for p in model.parameters())


def _op_cases(rng):
    """``(name, run)``, ``run(use_kernels)`` giving an op's forward and backward
    outputs on empty inputs."""
    def conv(n, c, k, bias=True):
        x, w = rng.standard_normal((n, c, 6, 5)), rng.standard_normal((k, c, 3, 2))
        b = rng.standard_normal(k) if bias else None

        def run(xp, use_kernels):
            y, ctx = ops.conv2d_forward(*(None if a is None else xp.asarray(a) for a in (x, w, b)),
                                        (1, 2), 1, use_kernels=use_kernels)
            return (y, *ctx.backward(xp.asarray(numpy.cos(backend.to_numpy(y)))))
        return run

    def conv_all_padding(h, w):  # an input of height or width 0: the output is padding's
        x, weight, b = (rng.standard_normal((2, 3, h, w)), rng.standard_normal((4, 3, 1, 1)),
                        rng.standard_normal(4))

        def run(xp, use_kernels):
            y, ctx = ops.conv2d_forward(xp.asarray(x), xp.asarray(weight), xp.asarray(b), 1, 1,
                                        use_kernels=use_kernels)
            return (y, *ctx.backward(xp.asarray(numpy.cos(backend.to_numpy(y)))))
        return run

    def pool(kind, shape):
        x = rng.standard_normal(shape)

        def run(xp, use_kernels):
            y, ctx = getattr(ops, f"{kind}_pool2d_forward")(xp.asarray(x), 3, 2, 1,
                                                            use_kernels=use_kernels)
            return (y, *ctx.backward(xp.ones_like(y)))
        return run

    def batch_norm(shape, training):
        c = shape[1]
        x, dy = rng.standard_normal(shape), rng.standard_normal(shape)

        def run(xp, use_kernels):
            mean, var = xp.asarray(numpy.linspace(-1, 1, c)), xp.asarray(numpy.linspace(1, 2, c))
            y, ctx = ops.batch_norm_forward(xp.asarray(x), xp.ones(c), xp.zeros(c), mean, var,
                                            training=training, use_kernels=use_kernels)
            return (y, mean, var, *ctx.backward(xp.asarray(dy)))
        return run

    return {
        "conv N=0": conv(0, 3, 4), "conv N=0 no bias": conv(0, 3, 4, bias=False),
        "conv C=0": conv(2, 0, 4), "conv K=0": conv(2, 3, 0),
        "conv H=0": conv_all_padding(0, 5), "conv W=0": conv_all_padding(4, 0),
        "max_pool N=0": pool("max", (0, 3, 6, 6)), "max_pool C=0": pool("max", (2, 0, 6, 6)),
        "avg_pool N=0": pool("avg", (0, 3, 6, 6)), "avg_pool C=0": pool("avg", (2, 0, 6, 6)),
        "batch_norm eval N=0": batch_norm((0, 3, 4, 4), False),
        "batch_norm eval N=0 (N, C)": batch_norm((0, 3), False),
        "batch_norm eval C=0": batch_norm((2, 0, 4, 4), False),
        "batch_norm train C=0": batch_norm((2, 0, 4, 4), True),
    }


CASES = list(_op_cases(numpy.random.default_rng(0)))


def _no_launch(*args, **kwargs):
    raise AssertionError(f"a kernel was launched for empty work: {args[:2]}")


@pytest.mark.parametrize("case", CASES)
def test_ops_on_empty_inputs_match_the_textbook_path(xp, monkeypatch, case):
    """Each op's accelerated path (the CPU accelerators on NumPy, the kernels on CuPy)
    against the textbook xp path: the same shapes and values."""
    run = _op_cases(numpy.random.default_rng(0))[case]
    enabled = ops.cpu_accelerators_enabled()
    got = run(xp, None)
    ops.set_cpu_accelerators_enabled(False)
    try:
        ref = run(xp, False)
    finally:
        ops.set_cpu_accelerators_enabled(enabled)
    for i, (a, b) in enumerate(zip(got, ref)):
        assert (a is None) == (b is None), i
        if a is not None:
            a, b = backend.to_numpy(a), backend.to_numpy(b)
            assert a.shape == b.shape, (i, a.shape, b.shape)
            assert_close(a, b, 1e-12, 1e-12, f"output {i}")


@pytest.mark.parametrize("case", CASES)
def test_cuda_launchers_return_empty_results_without_launching(monkeypatch, case):
    """The launchers (called with NumPy arrays, as under the emulator) on empty work:
    the textbook results, and no launch at all (one would divide by zero first, and on
    a GPU CuPy would run a zero grid as one block)."""
    run = _op_cases(numpy.random.default_rng(0))[case]
    enabled = ops.cpu_accelerators_enabled()
    ops.set_cpu_accelerators_enabled(False)
    try:
        ref = run(numpy, False)
    finally:
        ops.set_cpu_accelerators_enabled(enabled)
    # C=0 with a bias still has a bias gradient to sum: that one launch runs, emulated
    monkeypatch.setattr(runtime, "launch", cuda_emulator.emulated_launch if case == "conv C=0"
                        else _no_launch)
    for i, (a, b) in enumerate(zip(run(numpy, True), ref)):
        assert (a is None) == (b is None), i
        if a is not None and a.size:
            assert_close(a, b, 1e-12, 1e-12, f"output {i}")
        elif a is not None:
            assert a.shape == b.shape, (i, a.shape, b.shape)
