"""gpunet's CPU threads: chunked ops agree with unchunked ones, BLAS is limited to
one thread only while gpunet works, errors in a chunk reach the caller."""
import os
import subprocess
import sys
import threading

import numpy
import pytest

from gpunet import nn
from gpunet.cpu import batchnorm as cpu_batchnorm
from gpunet.cpu import parallel
from gpunet.ops import avg_pool2d_forward, conv2d_forward, max_pool2d_forward

needs_blas_control = pytest.mark.skipif(
    not parallel._state.blas_controllers(),
    reason="threadpoolctl is not installed or cannot control this BLAS")


def blas_threads():
    return [c.num_threads for c in parallel._state.blas_controllers()]


@pytest.fixture
def split_everything(monkeypatch):
    """Three threads and no minimum chunk: a batch of 5 runs as chunks of 2, 2, 1."""
    monkeypatch.setattr(parallel, "MIN_WORK_PER_CHUNK", 1)
    monkeypatch.setattr(parallel, "GEMM_MACS_PER_WORK", 1)
    monkeypatch.setattr(cpu_batchnorm, "MIN_VALUES_PER_CHUNK", 1)
    monkeypatch.setattr(parallel._state, "blas", [object()])  # pretend BLAS is controllable
    monkeypatch.setattr(parallel, "single_threaded_blas", _no_limit)
    requested = parallel._state.requested
    parallel.set_num_threads(3)
    yield
    parallel.set_num_threads(requested)


class _no_limit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_batch_slices_cover_the_batch_in_equal_chunks(split_everything):
    assert parallel.batch_slices(6, 6) == [slice(0, 2), slice(2, 4), slice(4, 6)]
    # the remainder goes to the first chunk, the calling thread's
    assert parallel.batch_slices(5, 5) == [slice(0, 3), slice(3, 4), slice(4, 5)]
    assert parallel.batch_slices(1, 100) == [slice(0, 1)]


def test_the_calling_threads_chunk_leads_by_a_workers_start(monkeypatch):
    """A worker starts late (it is woken), so the first chunk carries about
    WORKER_START_WORK more work, never more than a quarter of a share more."""
    monkeypatch.setattr(parallel._state, "requested", 2)
    monkeypatch.setattr(parallel._state, "blas", [object()])
    monkeypatch.setattr(parallel, "WORKER_START_WORK", 2**16)
    # 128 rows of 2**13 work each: the lead is 8 rows
    assert parallel.batch_slices(128, 2**20) == [slice(0, 68), slice(68, 128)]
    # half of the work: a 16-row lead, the most that 128 rows in two chunks allow
    assert parallel.batch_slices(128, 2**19) == [slice(0, 72), slice(72, 128)]
    assert parallel.batch_slices(128, 2**18) == [slice(0, 72), slice(72, 128)]
    # min_rows still holds for the workers' chunks
    assert parallel.batch_slices(9, 2**18, min_rows=4) == [slice(0, 5), slice(5, 9)]


def test_small_inputs_are_not_split(monkeypatch):
    monkeypatch.setattr(parallel._state, "requested", 4)
    monkeypatch.setattr(parallel._state, "blas", [object()])
    small = parallel.MIN_WORK_PER_CHUNK * 2 - 1
    assert parallel.batch_slices(64, small) == [slice(0, 64)]
    assert len(parallel.batch_slices(64, 4 * parallel.MIN_WORK_PER_CHUNK)) == 4


def test_one_thread_without_a_controllable_blas(monkeypatch):
    monkeypatch.setattr(parallel._state, "blas", [])
    monkeypatch.setattr(parallel._state, "requested", 8)
    assert parallel.num_threads() == 1
    assert parallel.batch_slices(64, 10**9) == [slice(0, 64)]


def test_map_chunks_runs_the_chunks_on_several_threads_in_order(split_everything):
    ran_on = {}

    def task(i):
        ran_on[i] = threading.current_thread().name
        return i * i

    assert parallel.map_chunks(task, [1, 2, 3]) == [1, 4, 9]
    assert ran_on[1] == threading.current_thread().name
    assert ran_on[2].startswith("gpunet-cpu") and ran_on[3].startswith("gpunet-cpu")


def test_an_error_in_a_worker_chunk_reaches_the_caller(split_everything):
    def task(i):
        if i == 2:
            raise ValueError("chunk 2 failed")
        return i

    with pytest.raises(ValueError, match="chunk 2 failed"):
        parallel.map_chunks(task, [0, 1, 2])


@needs_blas_control
def test_blas_is_single_threaded_inside_and_restored_after():
    before = blas_threads()
    inside = []
    with parallel.single_threaded_blas():
        with parallel.single_threaded_blas():  # nested: still one thread
            inside.append(blas_threads())
        inside.append(blas_threads())
    assert inside == [[1] * len(before)] * 2
    assert blas_threads() == before
    with pytest.raises(RuntimeError), parallel.single_threaded_blas():
        raise RuntimeError("restored even so")
    assert blas_threads() == before


def test_thread_count_is_validated(monkeypatch):
    with pytest.raises(ValueError, match="n"):
        parallel.set_num_threads(0)
    monkeypatch.setenv("GPUNET_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="GPUNET_NUM_THREADS.*'two'"):
        parallel._default_threads()
    monkeypatch.setenv("GPUNET_NUM_THREADS", "3")
    assert parallel._default_threads() == 3


@pytest.mark.parametrize("algorithm,stride,padding", [
    ("im2col", 2, 1), ("im2col_chwn", 1, 0), ("winograd", 1, 1)])
def test_chunked_convolution_matches_one_chunk(split_everything, rng, algorithm, stride,
                                               padding):
    x = rng.standard_normal((5, 3, 9, 9))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    y, ctx = conv2d_forward(x, w, b, stride, padding, algorithm=algorithm)
    assert isinstance(ctx, parallel.Chunked) and len(ctx.contexts) == 3
    dy = rng.standard_normal(y.shape)
    grads = ctx.backward(dy)
    parallel.set_num_threads(1)
    y1, ctx1 = conv2d_forward(x, w, b, stride, padding, algorithm=algorithm)
    assert len(ctx1.contexts) == 1
    numpy.testing.assert_allclose(y, y1, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ctx1.backward(dy)):
        numpy.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    dx, dw, db = ctx.backward(dy, input_grad=False)
    assert dx is None
    numpy.testing.assert_allclose(dw, grads[1], rtol=1e-12)
    with pytest.raises(ValueError, match=r"conv2d backward: dy must have shape \(5, 4"):
        ctx.backward(dy[:4])


@pytest.mark.parametrize("forward", [max_pool2d_forward, avg_pool2d_forward])
def test_chunked_pooling_matches_one_chunk(split_everything, rng, forward):
    x = rng.standard_normal((5, 2, 7, 7))
    y, ctx = forward(x, 3, 2, 1)
    assert isinstance(ctx, parallel.Chunked)
    dy = rng.standard_normal(y.shape)
    dx, = ctx.backward(dy)
    parallel.set_num_threads(1)
    y1, ctx1 = forward(x, 3, 2, 1)
    numpy.testing.assert_array_equal(y, y1)
    numpy.testing.assert_allclose(dx, ctx1.backward(dy)[0], rtol=1e-12)
    with pytest.raises(ValueError, match="dy must have shape"):
        ctx.backward(dy[:, :1])


def test_linear_splits_its_products_and_agrees(split_everything, rng):
    layer = nn.Linear(6, 4).to(dtype="float64")
    x = rng.standard_normal((5, 2, 6))
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    numpy.testing.assert_allclose(y, x @ layer.weight.data.T + layer.bias.data, rtol=1e-12)
    numpy.testing.assert_allclose(dx, dy @ layer.weight.data, rtol=1e-12)
    numpy.testing.assert_allclose(layer.weight.grad,
                                  dy.reshape(-1, 4).T @ x.reshape(-1, 6), rtol=1e-12)


@needs_blas_control
def test_a_training_step_leaves_blas_threads_as_they_were():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 13 * 13, 10))
    before = blas_threads()
    x = numpy.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(numpy.float32)
    model.backward(numpy.ones_like(model(x)))
    assert blas_threads() == before


def test_a_forked_child_gets_fresh_workers():
    code = ("import os, numpy, gpunet\n"
            "from gpunet import nn\n"
            "from gpunet.cpu import parallel\n"
            "parallel.MIN_WORK_PER_CHUNK = 1\n"
            "x = numpy.ones((8, 1, 8, 8), numpy.float32)\n"
            "pool = nn.MaxPool2d(2)\n"
            "pool(x)\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    pool(x); os._exit(0)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "print(os.waitstatus_to_exitcode(status))\n")
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "GPUNET_NUM_THREADS": "2"})
    assert out.stdout.strip() == "0", out.stderr


@needs_blas_control
def test_an_op_too_small_to_split_still_runs_its_backward_with_one_blas_thread(monkeypatch):
    from gpunet.cpu import conv2d as conv
    seen = []
    input_gradient = conv.input_gradient

    def spy(*args, **kwargs):
        seen.append(blas_threads())
        return input_gradient(*args, **kwargs)

    monkeypatch.setattr(conv, "input_gradient", spy)
    x = numpy.ones((1, 1, 5, 5))
    y, ctx = conv2d_forward(x, numpy.ones((1, 1, 3, 3)), algorithm="im2col")
    assert len(ctx.contexts) == 1
    ctx.backward(numpy.ones_like(y))
    assert seen == [[1] * len(blas_threads())]


def test_matmul_splits_plain_and_batched_products(split_everything, rng):
    cases = [((5, 4), (4, 3)), ((5, 3, 4), (5, 4, 2)), ((3, 4), (5, 4, 2)), ((5, 3, 4), (4, 2))]
    for a_shape, b_shape in cases:
        a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
        numpy.testing.assert_allclose(parallel.matmul(a, b), a @ b, rtol=1e-12)
    a, b = rng.standard_normal((5, 3, 4)), rng.standard_normal((5, 4, 2))
    out = numpy.empty((5, 3, 2))
    assert parallel.matmul(a, b.transpose(0, 2, 1).transpose(0, 2, 1), out=out) is out
    numpy.testing.assert_allclose(out, a @ b, rtol=1e-12)


def test_a_split_inside_a_split_runs_on_its_own_thread(split_everything):
    """The threads are busy with the outer chunks: a chunk's own splits run inline."""
    inner_threads = {}

    def inner(i):
        return threading.current_thread().name

    def outer(i):
        inner_threads[i] = set(parallel.map_chunks(inner, [0, 1, 2]))
        return i

    assert parallel.map_chunks(outer, [0, 1, 2]) == [0, 1, 2]
    for names in inner_threads.values():
        assert len(names) == 1
    # and once the outer split is over, the threads split again
    assert len(set(parallel.map_chunks(inner, [0, 1, 2]))) > 1


def test_a_batch_norm_under_its_minimum_stays_on_the_calling_thread(monkeypatch):
    """Memory-bound: a batch norm splits over threads only from MIN_VALUES_PER_CHUNK
    values a chunk (LeNet-5's, 602,112 values at batch 128, stays whole), where
    other ops split from MIN_WORK_PER_CHUNK."""
    monkeypatch.setattr(parallel._state, "blas", [object()])  # pretend BLAS is controllable
    requested = parallel._state.requested
    parallel.set_num_threads(2)
    try:
        lenet = numpy.broadcast_to(numpy.float32(0), (128, 6 * 28 * 28))
        assert lenet.size > 4 * parallel.MIN_WORK_PER_CHUNK
        assert len(parallel.batch_slices(128, lenet.size)) == 2  # as a pooling would
        assert cpu_batchnorm._row_chunks(lenet) == [slice(0, 128)]
        per_row = 2 * cpu_batchnorm.MIN_VALUES_PER_CHUNK // 128
        big = numpy.broadcast_to(numpy.float32(0), (128, per_row))
        assert len(cpu_batchnorm._row_chunks(big)) == 2
    finally:
        parallel.set_num_threads(requested)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_over_row_chunks_matches_one_chunk(split_everything, rng, training):
    from gpunet.ops import batch_norm_forward
    x = rng.standard_normal((5, 3, 4, 4)) * 3 + 100  # far from 0: the pivot matters
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    dy = rng.standard_normal(x.shape)
    results = []
    for threads in (3, 1):
        parallel.set_num_threads(threads)
        assert len(parallel.batch_slices(5, x.size)) == threads
        mean, var = numpy.full(3, 0.5), numpy.full(3, 2.0)
        y, ctx = batch_norm_forward(x, gamma, beta, mean, var, training=training)
        results.append((y, mean, var, *ctx.backward(dy)))
    for got, want in zip(*results):
        numpy.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(7, 3, 4, 4), (9, 5, 3), (11, 3), (2, 1, 5, 5), (3, 2, 1)],
                         ids=str)
def test_batch_norm_chunks_merged_match_the_textbook_path(split_everything, rng, shape,
                                                          training):
    """gpunet/cpu/batchnorm.py takes each chunk's statistics on its thread and merges
    them (Chan et al.); over unequal chunks (of 3, 2, 2 rows, or 1, 1) it gives the
    textbook path's y, running statistics and gradients, in float64 and in float32
    around a mean of 1e4 with a spread of 1e-2."""
    from gpunet import ops
    c = shape[1]
    for dtype, x in (("float64", rng.standard_normal(shape) * 3 + 100),
                     ("float32", (1e4 + 1e-2 * rng.standard_normal(shape)).astype("float32"))):
        gamma, beta = (rng.standard_normal(c).astype(dtype) for _ in range(2))
        dy = rng.standard_normal(shape).astype(dtype)
        results, enabled = [], ops.cpu_accelerators_enabled()
        for accelerated in (True, False):
            ops.set_cpu_accelerators_enabled(accelerated)
            try:
                mean, var = numpy.full(c, 0.5, dtype), numpy.full(c, 2.0, dtype)
                y, ctx = ops.batch_norm_forward(x, gamma, beta, mean, var, training=training)
                results.append((y, mean, var, *ctx.backward(dy)))
            finally:
                ops.set_cpu_accelerators_enabled(enabled)
        tol = 1e-12 if dtype == "float64" else 2e-3  # float32: x_hat keeps 1e-3 of 1e-2
        for got, want, name in zip(*results, ("y", "mean", "var", "dx", "dgamma", "dbeta")):
            scale = max(float(numpy.abs(want).max()), 1.0)
            numpy.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale,
                                          err_msg=f"{name} ({dtype})")
