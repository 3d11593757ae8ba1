"""The per-channel reductions keep four loads a thread in flight and still add in
the plain loop's order: bn_fwd_stats, bn_bwd_reduce and conv2d_bwd_bias against a
NumPy model of that order, bit for bit.

The model: the values of a run, thread t adding values t, t + 256, ... one at a time
(acc_t, from 0), then the block's tree (stride 128, 64, ..., 1), then the runs
summed (or merged) one after the other. The kernels run in tests/cuda_emulator: C++
on the CPU, where g++ contracts no multiply-add (x86-64 has no FMA by default), so
every rounding is the model's. A GPU contracts ``a + b c``: there the products'
sums differ by an ulp, and what holds is the comparison with the xp path. Shapes
make the unrolled loop run once or twice (a run of 769 to 1024 values, or of 1793
to 2048) with a tail, and not at all; odd sizes, N = 1, C = 1.
"""
import numpy
import pytest

from gpunet import ops
from gpunet.cuda import batchnorm as bn_kernels
from gpunet.cuda import conv2d_plan, runtime

from . import cuda_emulator
from .helpers import assert_close

BLOCK = runtime.BLOCK

pytestmark = pytest.mark.skipif(cuda_emulator.compiler() is None,
                                reason="g++ is needed to emulate the kernels on the CPU")


@pytest.fixture
def emulated(monkeypatch, gpunet_settings):
    """Kernel launches on NumPy arrays run in the CPU emulation, outputs poisoned."""
    gpunet_settings(cpu_accel=False, poison=True)  # undone after the test, whatever happens
    monkeypatch.setattr(runtime, "launch", cuda_emulator.emulated_launch)


def block_sum(values, dtype):
    """One block's sum of ``values`` in the kernels' order: per thread in stride-256
    steps, then the shared-memory tree. Zeros pad the last step (x + 0 = x exactly)."""
    steps = -(-len(values) // BLOCK)
    padded = numpy.zeros(steps * BLOCK, dtype)
    padded[:len(values)] = values
    acc = numpy.zeros(BLOCK, dtype)
    for row in padded.reshape(steps, BLOCK):
        acc = acc + row
    stride = BLOCK // 2
    while stride:
        acc[:stride] = acc[:stride] + acc[stride:2 * stride]
        stride //= 2
    return acc[0]


def runs_of(values, chunk):
    return [values[begin:begin + chunk] for begin in range(0, len(values), chunk)]


def sum_in_order(partials, dtype):
    total = dtype.type(0)
    for p in partials:
        total = dtype.type(total + dtype.type(p))
    return total


def channel_values(a, c):
    """Channel c's M values in the kernels' order j = n HW + hw."""
    return numpy.ascontiguousarray(a[:, c]).reshape(-1)


def bn_stats_model(x):
    """bn_fwd_stats and bn_fwd_stats_combine: ``(mean, var)`` per channel."""
    dtype = x.dtype
    n, c = x.shape[:2]
    m = x.size // c
    parts, chunk = bn_kernels.runs(m, c)
    weights = bn_kernels.merge_weights(m, parts, chunk).astype(dtype).reshape(parts, 3)
    means, variances = [], []
    for channel in range(c):
        values = channel_values(x, channel)
        pivot = values[0]
        offsets, squares = [], []
        for run, part in enumerate(runs_of(values, chunk)):
            offset = dtype.type(block_sum(part - pivot, dtype) * weights[run, 0])
            deviation = (part - pivot) - offset
            offsets.append(offset)
            squares.append(block_sum(deviation * deviation, dtype))
        offset, m2 = offsets[0], squares[0]
        for run in range(1, parts):
            delta = dtype.type(offsets[run] - offset)
            offset = dtype.type(offset + delta * weights[run, 1])
            m2 = dtype.type(m2 + dtype.type(squares[run] + delta * delta * weights[run, 2]))
        means.append(dtype.type(pivot + offset))
        variances.append(dtype.type(m2 * dtype.type(1.0 / m)))
    return numpy.array(means, dtype), numpy.array(variances, dtype)


def bn_backward_model(dy, x_hat):
    """bn_bwd_reduce and bn_bwd_reduce_combine: ``(dgamma, dbeta)``."""
    dtype = dy.dtype
    c = dy.shape[1]
    parts, chunk = bn_kernels.runs(dy.size // c, c)
    dgamma, dbeta = [], []
    for channel in range(c):
        d, h = channel_values(dy, channel), channel_values(x_hat, channel)
        dbeta.append(sum_in_order([block_sum(p, dtype) for p in runs_of(d, chunk)], dtype))
        dgamma.append(sum_in_order([block_sum(p, dtype) for p in runs_of(d * h, chunk)],
                                   dtype))
    return numpy.array(dgamma, dtype), numpy.array(dbeta, dtype)


def bias_model(dy):
    """conv2d_bwd_bias and its sum in run order (conv2d_bwd_weight_reduce)."""
    dtype = dy.dtype
    k = dy.shape[1]
    _, chunk = runtime.runs(dy.size // k, k, conv2d_plan.TARGET_BLOCKS, 1024)
    return numpy.array([sum_in_order([block_sum(p, dtype)
                                      for p in runs_of(channel_values(dy, f), chunk)], dtype)
                        for f in range(k)], dtype)


def longest_thread_loop(m, rows, target_blocks, min_run):
    """The unrolled iterations the busiest thread runs (0: the tail loop alone)."""
    _, chunk = runtime.runs(m, rows, target_blocks, min_run)
    return max(0, -(-(chunk - 3 * BLOCK) // (4 * BLOCK)))


BN_SHAPES = [(1, 1, 3219), (3, 2, 37, 29), (2, 130, 61, 67), (5, 3, 7), (2, 1, 1, 1)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_reductions_add_in_the_plain_loops_order(emulated, shape, dtype, rng):
    x = (rng.standard_normal(shape) * 3 + 7).astype(dtype)
    dy, x_hat = (rng.standard_normal(shape).astype(dtype) for _ in range(2))

    def run():
        mean, var, *_ = bn_kernels.stats(x)
        _, dgamma, dbeta = bn_kernels.backward(dy, x_hat, numpy.ones(shape[1], dtype),
                                               numpy.ones(shape[1], dtype), True, False)
        return mean, var, dgamma, dbeta

    first, second = run(), run()
    for a, b in zip(first, second):
        assert numpy.array_equal(a, b), "not bitwise reproducible"
    mean, var, dgamma, dbeta = first
    model_mean, model_var = bn_stats_model(x)
    model_dgamma, model_dbeta = bn_backward_model(dy, x_hat)
    for got, want, name in ((mean, model_mean, "mean"), (var, model_var, "var"),
                            (dgamma, model_dgamma, "dgamma"), (dbeta, model_dbeta, "dbeta")):
        assert numpy.array_equal(got, want), \
            f"{name}: not the plain loop's sum, max difference {numpy.abs(got - want).max()}"
    axes = (0, *range(2, len(shape)))
    tol = 1e-5 if dtype == "float32" else 1e-12
    exact = x.astype(numpy.float64)
    assert_close(mean, exact.mean(axis=axes), tol, tol * 10, "mean against float64")
    assert_close(var, exact.var(axis=axes), tol, tol * 10, "var against float64")
    assert_close(dbeta, dy.astype(numpy.float64).sum(axis=axes), tol, tol * 100, "dbeta")


def test_the_shapes_run_the_unrolled_loops():
    """The cases above do reach the unrolled loops, once and twice, and skip them."""
    loops = {longest_thread_loop(int(numpy.prod(s)) // s[1], s[1], bn_kernels.TARGET_BLOCKS,
                                 bn_kernels.MIN_RUN) for s in BN_SHAPES}
    assert {0, 1, 2} <= loops, loops
    loops = {longest_thread_loop(int(numpy.prod(s)) // s[1], s[1], conv2d_plan.TARGET_BLOCKS,
                                 1024) for s in BIAS_SHAPES}
    assert {0, 1, 2} <= loops, loops


BIAS_SHAPES = [(1, 1, 57, 57), (3, 5, 31, 29), (2, 200, 45, 47), (1, 6, 3, 5)]  # dy


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", BIAS_SHAPES, ids=str)
def test_conv2d_bias_gradient_adds_in_the_plain_loops_order(emulated, shape, dtype, rng):
    """A 1 x 1 convolution of one channel, so that dy has the shape given."""
    n, k, oh, ow = shape
    x = rng.standard_normal((n, 1, oh, ow)).astype(dtype)
    weight, bias = rng.standard_normal((k, 1, 1, 1)).astype(dtype), numpy.zeros(k, dtype)
    dy = rng.standard_normal(shape).astype(dtype)

    def run():
        _, ctx = ops.conv2d_forward(x, weight, bias, 1, 0, use_kernels=True)
        return ctx.backward(dy, False)[2]

    first = run()
    assert numpy.array_equal(first, run()), "not bitwise reproducible"
    want = bias_model(dy)
    assert numpy.array_equal(first, want), \
        f"not the plain loop's sum, max difference {numpy.abs(first - want).max()}"
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert_close(first, dy.astype(numpy.float64).sum(axis=(0, 2, 3)), tol, tol * 100, "dbias")
