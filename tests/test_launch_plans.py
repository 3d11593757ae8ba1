"""The plans tell the truth: what the launchers' plan objects say they launch
(gpunet.cuda.conv2d_plan through bench/gpu_plan.py's conv_launches, the
``*_plan`` functions of gpunet.cuda.batchnorm and pool2d) is what the CuPy test
double records, kernel by kernel: name, grid, block and shared memory, in order.
Per op on awkward shapes, and for a whole LeNet-5 training step against the
per-model table of bench/gpu_plan.py."""
import functools
import os
import sys

import numpy
import pytest

from gpunet import models, ops
from gpunet._context import dilated_kernel, normalize_padding
from gpunet.cuda import batchnorm as bn_kernels
from gpunet.cuda import pool2d as pool_kernels
from gpunet.cuda import runtime

from .helpers import double_launch_recorder

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import gpu_plan  # noqa: E402


@pytest.fixture
def double(gpunet_settings):
    """``(cupy, take)``: the CuPy test double and the launches it recorded since the
    last ``take()`` (helpers.double_launch_recorder), outputs poisoned."""
    gpunet_settings(poison=True)
    return double_launch_recorder()


def _tuples(launches):
    return [(lc.kernel, tuple(lc.grid), tuple(lc.block), lc.shared_mem) for lc in launches]


CONV_CASES = [  # N, C, H, W, K, R, S, stride, padding, bias
    (1, 1, 5, 7, 1, 3, 3, (1, 1), 0, True),        # C = K = 1: the direct kernels
    (2, 3, 11, 9, 6, 5, 5, (2, 3), 2, True),       # strides 2 and 3, K = 6
    (1, 17, 6, 5, 3, 3, 3, (2, 2), 1, False),      # C = 17: the backward-data GEMM
    (3, 5, 9, 7, 20, 3, 2, (1, 1), (1, 0), True),  # K = 20: the forward GEMM
    (1, 30, 6, 5, 70, 3, 4, (1, 3), (2, 1), True),  # the 128 x 128 tile
    (2, 41, 7, 6, 20, 3, 3, (1, 1), 1, False),     # weight GEMM, split-K
]


@pytest.mark.gpu
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_launches_what_its_plans_say(double, case, dtype, input_grad, rng):
    xp, take = double
    n, c, h, w, k, r, s, stride, padding, has_bias = case
    x = xp.asarray(rng.standard_normal((n, c, h, w)).astype(dtype))
    weight = xp.asarray(rng.standard_normal((k, c, r, s)).astype(dtype))
    bias = xp.asarray(rng.standard_normal(k).astype(dtype)) if has_bias else None
    take()
    y, ctx = ops.conv2d_forward(x, weight, bias, stride, padding, use_kernels=True)
    forward = take()
    ctx.backward(xp.asarray(rng.standard_normal(y.shape).astype(dtype)), input_grad)
    backward = take()
    pads = normalize_padding(padding, dilated_kernel((r, s), (1, 1)), stride)
    planned = gpu_plan.conv_launches((n, c, h, w, k, r, s, *y.shape[2:]), stride, pads,
                                     has_bias, input_grad, dtype, False, runtime.sm_count(xp))
    assert forward == _tuples(planned[0])
    assert backward == _tuples(planned[1])


POOL_CASES = [  # N, C, H, W, kernel, stride, padding, ceil_mode
    (1, 1, 5, 5, (2, 2), (2, 2), (0, 0), False),
    (2, 3, 7, 8, (3, 2), (2, 2), (1, 0), True),   # ceil mode's overhang
    (3, 2, 9, 6, (3, 3), (1, 2), (1, 1), False),
    (1, 5, 28, 28, (2, 2), (2, 2), (0, 0), False),  # LeNet's, the paired loads
]


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pool2d_launches_what_its_plans_say(double, case, kind, rng):
    xp, take = double
    n, c, h, w, kernel, stride, padding, ceil_mode = case
    x = xp.asarray(rng.standard_normal((n, c, h, w)).astype("float32"))
    forward_op = ops.max_pool2d_forward if kind == "max" else ops.avg_pool2d_forward
    take()
    y, ctx = forward_op(x, kernel, stride, padding, use_kernels=True, ceil_mode=ceil_mode)
    forward = take()
    ctx.backward(xp.asarray(rng.standard_normal(y.shape).astype("float32")))
    assert forward == _tuples(pool_kernels.forward_plan(kind, x.shape, y.shape[2:]))
    assert take() == _tuples(pool_kernels.backward_plan(kind, x.shape))


BN_SHAPES = [(2, 3, 5, 7), (1, 1, 9), (5, 4), (3, 1, 1, 1), (4, 2, 257), (2, 6, 28, 28),
             (64, 6, 8, 8), (2, 3, 4, 5)]  # the last three: HW a multiple of the vector


@pytest.mark.gpu
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "offset"])
def test_batch_norm_launches_what_its_plans_say(double, shape, dtype, training, input_grad,
                                                aligned, rng):
    """Training and evaluation, forward and backward with and without the input
    gradient; ``offset``: x and dy contiguous views one element into a larger array,
    off the 16-byte boundary (the elementwise kernels then move single elements where
    they would move vectors)."""
    xp, take = double
    c, size, skip = shape[1], int(numpy.prod(shape)), 0 if aligned else 1

    def put(values):
        return xp.asarray(values.astype(dtype).ravel())[skip:skip + size].reshape(shape)
    x = put(numpy.concatenate([[0.0], rng.standard_normal(size) * 2 + 5]))
    dy = put(numpy.concatenate([[0.0], rng.standard_normal(size)]))
    gamma, beta = (xp.asarray(rng.standard_normal(c).astype(dtype)) for _ in range(2))
    mean, var = xp.zeros(c, dtype), xp.ones(c, dtype)
    take()
    _, ctx = ops.batch_norm_forward(x, gamma, beta, mean, var, training=training,
                                    use_kernels=True)
    forward = take()
    ctx.backward(dy, input_grad)
    backward = take()
    x_aligned = runtime.address(x) % 16 == 0
    plan = bn_kernels.train_forward_plan if training else bn_kernels.eval_forward_plan
    assert forward == _tuples(plan(shape, dtype, x_aligned))
    assert backward == _tuples(bn_kernels.backward_plan(
        shape, dtype, input_grad, runtime.address(dy) % 16 == 0 and x_aligned))
    assert x_aligned == aligned  # the offset case did move off the boundary


LENET = {"lenet5": models.lenet5, "lenet5 batch norm": functools.partial(models.lenet5,
                                                                         batch_norm=True)}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(LENET))
def test_a_lenet5_training_step_launches_what_the_step_table_says(double, name):
    """One training step through the double (zero_grad, forward, loss, backward, Adam)
    records zero_grad's launch, the launches of every layer's plans, forward in layer
    order and backward in reverse, then Adam's, and as many as bench/gpu_plan.py's
    per-model table prints for that batch and SM count."""
    xp, _ = double
    batch = 2
    work = gpu_plan.count_step_work(LENET[name], (1, 28, 28), batch)
    layers = gpu_plan.step_launches(LENET[name]().to("cpu"), (1, 28, 28), batch,
                                    sms=runtime.sm_count(xp))
    model = LENET[name]().to("cpu")
    planned = gpu_plan.zero_grad_launches(model) + \
        [lc for _, forward, _ in layers for lc in forward] + \
        [lc for _, _, backward in reversed(layers) for lc in backward] + \
        gpu_plan.optimizer_launches(model)
    assert work["launched"] == _tuples(planned)
    (row,) = [m for m in gpu_plan.STEP_MODELS if m[0] == name]
    # at the double's batch and SM count: where a pass splits depends on both
    table = gpu_plan.step_counts(row[1]().to("cpu"), row[2], batch, sms=runtime.sm_count(xp))
    assert len(work["launched"]) == table["ours"]
    assert {f: work["kernels"][f] for f in gpu_plan.FAMILIES} == \
        {f: table[f] for f in gpu_plan.FAMILIES}
    assert work["cupy ops"] > 0  # the counter sees the linear layers, loss and zero_grad
    # zero_grad and Adam's update are launches and no CuPy operation (issue 26: a fill
    # and 14 operations a parameter before)
    assert "optim.optimizers" not in work["origins"]


def test_step_table_counts_each_layer_of_lenet5():
    """The per-model table's LeNet-5 rows, by hand: each conv a forward, a weight
    GEMM and its split-K sum, the second conv a backward-data launch as well (the
    first layer's input needs no gradient), a bias gradient and its sum where the
    conv has a bias (not before a batch norm); each max pool one launch each way;
    each batch norm three each way; zero_grad one launch, Adam one a parameter (a
    weight and a bias a layer, a batch norm's weight and bias in place of its conv's or
    linear's bias)."""
    plain = gpu_plan.step_counts(models.lenet5().to("cpu"), (1, 28, 28), 64)
    # the second conv's backward-data splits over its filters at batch 64 on 132 SMs
    # (conv2d_plan fills three quarters of the waves): its slices summed by one launch
    assert plain == {"conv": 3 + 2 + 4 + 3, "pool": 4, "batch norm": 0,
                     "optimizer": 1 + 5 * 2, "ours": 27}
    normed = gpu_plan.step_counts(models.lenet5(batch_norm=True).to("cpu"), (1, 28, 28), 64)
    assert normed == {"conv": 3 + 5, "pool": 4, "batch norm": 4 * 6,
                      "optimizer": 1 + 4 * 3 + 2, "ours": 51}


def test_the_device_tables_keep_the_shapes_used_last_and_no_more(monkeypatch):
    """runtime.table: built once per key, the least recently used dropped first once
    TABLES_KEPT are held (a stream of new shapes must not grow device memory)."""
    monkeypatch.setattr(runtime, "TABLES_KEPT", 3)
    monkeypatch.setattr(runtime, "_tables", type(runtime._tables)())
    built = []

    def get(key):
        return runtime.table(numpy, ("test", key), lambda: built.append(key) or [key],
                             numpy.int32)

    first = get(0)
    for key in (1, 2):
        get(key)
    assert get(0) is first and built == [0, 1, 2]  # a hit: no build, and 0 is fresh again
    get(3)  # drops 1, the least recently used
    assert len(runtime._tables) == 3
    get(0), get(2), get(3)
    assert built == [0, 1, 2, 3]
    get(1)
    assert built == [0, 1, 2, 3, 1] and len(runtime._tables) == 3


def test_a_geometry_is_a_cached_read_only_struct_of_int32_fields():
    """runtime.geometry: the by-value kernel argument, one object per shape (a hit
    builds nothing), packed as the C struct (4 bytes a field, in order), read-only
    (every launch of the shape shares it), and bounded."""
    fields, values = ("C", "HW", "M"), (3, 20, 40)
    struct = runtime.geometry(fields, values)
    assert isinstance(struct, numpy.void) and struct.dtype.names == fields
    assert struct.itemsize == 12 and struct.tobytes() == numpy.array(values, "<i4").tobytes()
    assert runtime.geometry(fields, values) is struct
    with pytest.raises(ValueError, match="read-only"):
        struct["C"] = 4
    with pytest.raises(ValueError, match=r"geometry: 3 fields .* but 2 values"):
        runtime.geometry(fields, (3, 20))
    assert runtime.geometry.cache_info().maxsize == runtime.GEOMETRIES_KEPT


@pytest.mark.parametrize("op", ["max pool", "avg pool", "batch norm", "conv2d"])
def test_geometries_take_no_device_table(op, monkeypatch, gpunet_settings, rng):
    """A shape's geometry goes by value: a forward and backward of a new shape puts on
    the device only the tables that stay there (conv2d's taps and phases, batch norm's
    merge weights, average pooling's reciprocals), no geometry."""
    from . import cuda_emulator
    monkeypatch.setattr(runtime, "launch", cuda_emulator.emulated_launch)
    monkeypatch.setattr(runtime, "_tables", type(runtime._tables)())
    gpunet_settings(poison=True)
    x = rng.standard_normal((2, 3, 7, 6))
    if op == "batch norm":
        gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
        y, ctx = ops.batch_norm_forward(x, gamma, beta, numpy.zeros(3), numpy.ones(3),
                                        training=True, use_kernels=True)
        expected = {"batch_norm merge weights"}
    elif op == "conv2d":
        x = rng.standard_normal((2, 20, 7, 6))  # C, K > 16: GEMMs, which read tables
        y, ctx = ops.conv2d_forward(x, rng.standard_normal((24, 20, 3, 3)), None, (2, 1), 1,
                                    use_kernels=True)
        expected = {"conv2d forward taps", "conv2d zero bias", "conv2d data phases"}
    else:
        pool = ops.max_pool2d_forward if op == "max pool" else ops.avg_pool2d_forward
        y, ctx = pool(x, 3, 2, 1, use_kernels=True)
        expected = set() if op == "max pool" else {"pool2d reciprocals"}
    ctx.backward(numpy.ones_like(y))
    assert {key[1][0] for key in runtime._tables} == expected


@pytest.mark.parametrize("op", ["max pool", "batch norm", "conv2d"])
def test_a_repeated_shape_computes_no_geometry(op, monkeypatch, gpunet_settings, rng):
    """Issue 26.5: a second launch of a shape finds its geometry struct by one lookup;
    no divisor is computed again (runtime.fast_divisor is not called)."""
    from . import cuda_emulator
    monkeypatch.setattr(runtime, "launch", cuda_emulator.emulated_launch)
    gpunet_settings(poison=True)
    x = rng.standard_normal((2, 3, 9, 11))

    def run():
        if op == "batch norm":
            ops.batch_norm_forward(x, numpy.ones(3), numpy.zeros(3), numpy.zeros(3),
                                   numpy.ones(3), training=True, use_kernels=True)
        elif op == "conv2d":
            ops.conv2d_forward(x, numpy.ones((4, 3, 3, 3)), None, 1, 1, use_kernels=True)
        else:
            ops.max_pool2d_forward(x, 3, 2, 1, use_kernels=True)

    run()
    divisions = []
    real = runtime.fast_divisor
    monkeypatch.setattr(runtime, "fast_divisor", lambda d: divisions.append(d) or real(d))
    run()
    assert divisions == []
