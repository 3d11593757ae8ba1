"""Conv2d against the naive loop reference, forward and backward: the textbook xp
path of gpunet.ops.conv2d, the CPU accelerators of gpunet.cpu.conv2d (each
algorithm) and, through the ``xp`` fixture, the CUDA kernels."""
import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpunet import nn, ops
from gpunet.backend import to_numpy

from .helpers import assert_close, conv2d_backward_ref, conv2d_ref

# (N, C, H, W, K, R, S, stride, padding): N=1, odd sizes, stride 2 and 3,
# padding, windows that reach the border, rectangular kernels, 1x1.
AWKWARD = [
    (1, 1, 5, 5, 1, 3, 3, 1, 0),
    (2, 3, 7, 6, 4, 3, 3, 2, 1),
    (1, 2, 9, 9, 3, 3, 3, 3, 0),
    (3, 2, 8, 7, 2, 5, 3, 3, (2, 1)),
    (2, 4, 6, 6, 5, 1, 1, 1, 0),
    (1, 3, 5, 5, 2, 5, 5, 1, 2),
    (2, 1, 11, 4, 3, 2, 4, (2, 3), (1, 2)),
    (1, 2, 3, 3, 2, 3, 3, 2, 1),
]


def _pads(padding):
    return ops.normalize_padding(padding, (0, 0), (1, 1)) if not isinstance(padding, str) \
        else None


def _run(xp, case, rng, dtype="float64", algorithm=None):
    if algorithm is not None and (xp is not numpy or not ops.cpu_accelerators_enabled()):
        pytest.skip("an algorithm of the CPU accelerators: NumPy arrays only")
    n, c, h, w, k, r, s, stride, padding = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c, r, s)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype)
    y, ctx = ops.conv2d_forward(xp.asarray(x), xp.asarray(weight), xp.asarray(bias),
                                stride, padding, algorithm=algorithm)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = ctx.backward(xp.asarray(dy))
    stride2 = stride if isinstance(stride, tuple) else (stride, stride)
    pads = _pads(padding)
    return (x, weight, bias, dy, stride2, pads), (y, dx, dw, db)


# im2col computes dW image by image from 32 output pixels up (AWKWARD: below)
WIDE = [(2, 2, 18, 17, 3, 3, 3, 1, 1), (1, 3, 40, 36, 2, 5, 5, (2, 1), 2)]
# input_gradient forms W^T dy whole, not by kernel rows, once K >= 2*S*C (AWKWARD: below)
MANY_FILTERS = [(2, 1, 7, 6, 8, 3, 3, 1, 1), (2, 2, 9, 8, 12, 3, 2, 2, 1)]
# stride 1 with C*S >= KERNEL_ROWS_MIN_GEMM_ROWS: the CHWN weight gradient by kernel rows
KERNEL_ROWS = [(2, 4, 7, 6, 3, 3, 4, 1, (1, 2)), (3, 6, 8, 8, 5, 3, 3, 1, 0)]


@pytest.mark.parametrize("algorithm", [None, "im2col", "im2col_chwn"])
@pytest.mark.parametrize("case", AWKWARD + WIDE + MANY_FILTERS + KERNEL_ROWS, ids=str)
def test_conv2d_matches_naive_reference(xp, case, algorithm, rng):
    (x, w, b, dy, stride, pads), (y, dx, dw, db) = _run(xp, case, rng, algorithm=algorithm)
    assert_close(y, conv2d_ref(x, w, b, stride, pads), 1e-12, 1e-12, "y")
    rdx, rdw, rdb = conv2d_backward_ref(x, w, dy, stride, pads)
    assert_close(dx, rdx, 1e-12, 1e-12, "dx")
    assert_close(dw, rdw, 1e-12, 1e-12, "dweight")
    assert_close(db, rdb, 1e-12, 1e-12, "dbias")


def test_conv2d_float32_close_to_float64(xp, rng):
    case = AWKWARD[1]
    _, out32 = _run(xp, case, numpy.random.default_rng(5), "float32")
    _, out64 = _run(xp, case, numpy.random.default_rng(5), "float64")
    for a, b, name in zip(out32, out64, ("y", "dx", "dw", "db")):
        assert a.dtype == numpy.float32, name
        assert_close(a, b, 1e-4, 1e-5, name)


@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.integers(1, 3), r=st.integers(1, 4), s=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2),
       pw=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_conv2d_random_shapes(n, c, h, w, k, r, s, sh, sw, ph, pw, seed):
    if h + 2 * ph < r or w + 2 * pw < s:
        with pytest.raises(ValueError, match="larger than the padded input"):
            ops.conv2d_forward(numpy.zeros((n, c, h, w)), numpy.zeros((k, c, r, s)),
                               None, (sh, sw), (ph, pw))
        return
    rng = numpy.random.default_rng(seed)
    (x, wt, b, dy, stride, pads), (y, dx, dw, db) = _run(
        numpy, (n, c, h, w, k, r, s, (sh, sw), (ph, pw)), rng, algorithm="im2col")
    assert_close(y, conv2d_ref(x, wt, b, stride, pads), 1e-12, 1e-12, "y")
    rdx, rdw, _ = conv2d_backward_ref(x, wt, dy, stride, pads)
    assert_close(dx, rdx, 1e-12, 1e-12, "dx")
    assert_close(dw, rdw, 1e-12, 1e-12, "dweight")


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5, (2, 5)])
def test_same_padding_keeps_size(xp, kernel, rng):
    layer = nn.Conv2d(2, 3, kernel, padding="same")
    x = xp.asarray(rng.standard_normal((2, 2, 7, 6)).astype("float32"))
    assert layer(x).shape == (2, 3, 7, 6)
    # an even kernel puts the extra pixel bottom/right, as PyTorch does
    k = layer.kernel_size
    pads = tuple(((f - 1) // 2, f - 1 - (f - 1) // 2) for f in k)
    ref = conv2d_ref(to_numpy(x), to_numpy(layer.weight.data), to_numpy(layer.bias.data),
                     (1, 1), pads)
    assert_close(layer(x), ref, 1e-5, 1e-5)


def test_valid_padding_is_zero_padding(xp, rng):
    a = nn.Conv2d(1, 2, 3, padding="valid")
    x = xp.asarray(rng.standard_normal((1, 1, 6, 6)).astype("float32"))
    assert a(x).shape == (1, 2, 4, 4)


@pytest.mark.parametrize("n,f,p,s,expected", [(6, 3, 0, 1, 4), (6, 3, 1, 1, 6), (7, 3, 0, 2, 3),
                                              (32, 5, 0, 1, 28), (28, 5, 2, 1, 28),
                                              (224, 11, 2, 4, 55), (8, 3, 0, 3, 2)])
def test_output_size_is_the_notes_formula(n, f, p, s, expected):
    """floor((n + 2p - f)/s) + 1, including the notes' 7x7, f=3, s=2 -> 3."""
    assert ops.output_size(n, f, s, (p, p)) == expected
    x = numpy.zeros((1, 1, n, n), dtype=numpy.float32)
    y, _ = ops.conv2d_forward(x, numpy.zeros((1, 1, f, f), numpy.float32), None, s, p)
    assert y.shape == (1, 1, expected, expected)


def test_backward_accumulates_into_parameter_grads(rng):
    layer = nn.Conv2d(2, 2, 3)
    x = rng.standard_normal((2, 2, 5, 5)).astype("float32")
    dy = rng.standard_normal((2, 2, 3, 3)).astype("float32")
    layer(x)
    layer.backward(dy)
    once = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer(x)
    layer.backward(dy)
    assert_close(layer.weight.grad, 2 * once[0], 1e-6, 1e-6)
    assert_close(layer.bias.grad, 2 * once[1], 1e-6, 1e-6)
    layer.zero_grad()
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


def test_conv_layer_without_bias(rng):
    layer = nn.Conv2d(1, 2, 3, bias=False)
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    x = rng.standard_normal((1, 1, 4, 4)).astype("float32")
    ref = conv2d_ref(x, layer.weight.data, None, (1, 1), ((0, 0), (0, 0)))
    assert_close(layer(x), ref, 1e-5, 1e-5)
    assert layer.backward(numpy.ones((1, 2, 2, 2), "float32")).shape == x.shape


def test_parameter_count_of_the_notes_example():
    """10 filters of 3x3x3: (27 + 1) * 10 = 280 parameters."""
    layer = nn.Conv2d(3, 10, 3)
    assert sum(p.data.size for p in layer.parameters()) == 280


# -- true convolution vs cross-correlation --------------------------------------
def test_convolve2d_flips_the_kernel(rng):
    a = rng.standard_normal((6, 5))
    k = rng.standard_normal((3, 2))
    assert_close(ops.convolve2d(a, k), ops.correlate2d(a, k[::-1, ::-1]), 1e-12, 1e-12)
    # by hand, one output: sum a[i+u, j+v] * k[R-1-u, S-1-v]
    by_hand = sum(a[1 + u, 2 + v] * k[2 - u, 1 - v] for u in range(3) for v in range(2))
    assert ops.convolve2d(a, k)[1, 2] == pytest.approx(by_hand, rel=1e-12)


def test_convolution_is_associative_cross_correlation_is_not(rng):
    a = rng.standard_normal((6, 6))
    b = rng.standard_normal((3, 3))
    c = rng.standard_normal((2, 3))
    conv = ops.convolve2d
    assert_close(conv(conv(a, b, "full"), c, "full"), conv(a, conv(b, c, "full"), "full"),
                 1e-10, 1e-10, "(A*B)*C vs A*(B*C)")
    corr = ops.correlate2d
    left = corr(corr(a, b, "full"), c, "full")
    right = corr(a, corr(b, c, "full"), "full")
    assert left.shape == right.shape
    assert numpy.abs(left - right).max() > 1e-3


def test_correlate2d_modes(rng):
    a = rng.standard_normal((5, 7))
    k = rng.standard_normal((3, 3))
    assert ops.correlate2d(a, k, "valid").shape == (3, 5)
    assert ops.correlate2d(a, k, "same").shape == (5, 7)
    assert ops.correlate2d(a, k, "full").shape == (7, 9)
    with pytest.raises(ValueError, match="mode"):
        ops.correlate2d(a, k, "circular")


@pytest.mark.torch
def test_conv2d_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 4, 13, 11))
    layer = nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2)).to(dtype="float64")
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(layer.weight.data),
                                     torch.from_numpy(layer.bias.data), (2, 1), (1, 2))
    assert_close(layer(x), ref.numpy(), 1e-12, 1e-12)


def test_both_im2col_layouts_agree_in_float32_at_lenet_shapes(rng):
    for shape, w_shape in [((8, 1, 32, 32), (6, 1, 5, 5)), ((8, 6, 14, 14), (16, 6, 5, 5))]:
        x = rng.standard_normal(shape).astype(numpy.float32)
        weight = (rng.standard_normal(w_shape) / 5).astype(numpy.float32)
        bias = rng.standard_normal(w_shape[0]).astype(numpy.float32)
        outputs = {}
        for algorithm in ("im2col", "im2col_chwn"):
            y, ctx = ops.conv2d_forward(x, weight, bias, algorithm=algorithm)
            outputs[algorithm] = (y, *ctx.backward(numpy.cos(y)))
        for got, ref in zip(outputs["im2col_chwn"], outputs["im2col"]):
            assert got.dtype == numpy.float32
            # both round in float32, summing in different orders
            scale = float(numpy.abs(ref).max())
            assert float(numpy.abs(got - ref).max()) < 2e-6 * scale


# stride-1 CPU paths of few filters: (x shape, weight shape, pads)
STRIDE_1_THIN = [
    ((3, 6, 14, 14), (16, 6, 5, 5), ((0, 0), (0, 0))),  # LeNet-5's conv2
    ((2, 3, 7, 9), (4, 3, 3, 4), ((2, 0), (1, 3))),  # uneven padding, rectangular kernel
    ((1, 2, 4, 5), (3, 2, 1, 2), ((0, 1), (0, 0))),
]


def _stride_1_case(x_shape, w_shape, pads, rng):
    """``x, weight, out_hw``, the loop reference's ``dx, dw``, and ``(dtype, dy in
    CHWN)`` in float64 and float32 to run."""
    from gpunet.cpu import conv2d as cpu_conv2d
    x, weight = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    out_hw = tuple(cpu_conv2d.output_size(n, f, 1, p)
                   for n, f, p in zip(x_shape[2:], w_shape[2:], pads))
    dy = rng.standard_normal((x_shape[0], w_shape[0], *out_hw))
    dx_ref, dw_ref, _ = conv2d_backward_ref(x, weight, dy, (1, 1), pads)
    return x, weight, out_hw, dx_ref, dw_ref, [
        (dtype, numpy.ascontiguousarray(dy.astype(dtype).transpose(1, 2, 3, 0)).reshape(
            w_shape[0], -1)) for dtype in (numpy.float64, numpy.float32)]


def _tolerance(dtype, ref):
    # float32 sums hundreds of terms: its bound scales with the largest entry
    return 1e-12 if dtype is numpy.float64 else 1e-5 * float(numpy.abs(ref).max())


@pytest.mark.parametrize("x_shape, w_shape, pads", STRIDE_1_THIN)
@pytest.mark.parametrize("one_row_blocks", [False, True])
def test_stride_1_input_gradient_in_row_frames_matches_the_reference(
        x_shape, w_shape, pads, one_row_blocks, rng, monkeypatch):
    """The stride-1, few-filter path of input_gradient (dy shifted into padded-width
    rows, one GEMM and R adds per block of output rows) against the loop
    reference, float64 and float32, in one block and in blocks of one row."""
    from gpunet.cpu import conv2d as cpu_conv2d
    from gpunet.cpu.conv2d import input_gradient
    if one_row_blocks:
        monkeypatch.setattr(cpu_conv2d, "ROW_FRAME_BLOCK_BYTES", 1)
    assert w_shape[0] < 2 * w_shape[3] * w_shape[1]  # the thin case this path takes
    _, weight, out_hw, ref, _, runs = _stride_1_case(x_shape, w_shape, pads, rng)
    for dtype, dy_chwn in runs:
        tol = _tolerance(dtype, ref)
        dx = input_gradient(weight.astype(dtype), dy_chwn, x_shape, (1, 1), pads, out_hw)
        assert dx.dtype == dtype and dx.flags.c_contiguous
        assert_close(dx, ref, tol, tol, f"dx {dtype.__name__}")


@pytest.mark.parametrize("x_shape, w_shape, pads", STRIDE_1_THIN)
def test_weight_gradient_by_kernel_rows_matches_the_reference(x_shape, w_shape, pads, rng):
    """The stride-1 CHWN weight gradient (S shifted copies of the input, a GEMM
    per kernel row on a strided view) against the loop reference."""
    from gpunet.cpu import conv2d as cpu_conv2d
    x, _, out_hw, _, ref, runs = _stride_1_case(x_shape, w_shape, pads, rng)
    for dtype, dy_chwn in runs:
        tol = _tolerance(dtype, ref)
        dw = cpu_conv2d.weight_gradient_by_kernel_rows(x.astype(dtype), dy_chwn, w_shape[2:],
                                                       pads, out_hw)
        assert dw.dtype == dtype and dw.shape == w_shape and dw.flags.c_contiguous
        assert_close(dw, ref, tol, tol, f"dweight {dtype.__name__}")


def test_gradcheck_through_a_chwn_layer(rng):
    """A small strided, padded Conv2d takes the CHWN path and passes the float64
    gradient check, input gradient included."""
    from gpunet import gradcheck
    from gpunet.losses import MSELoss
    layer = nn.Conv2d(2, 3, 3, stride=(1, 2), padding=1)
    x = rng.standard_normal((2, 2, 6, 7))
    _, ctx = ops.conv2d_forward(x, layer.weight.data.astype(x.dtype), None, (1, 2), 1)
    assert all(part.chwn for part in ctx.contexts)
    model = nn.Sequential(layer, nn.Flatten())
    target = rng.standard_normal((2, 3 * 6 * 4))
    report = gradcheck(model, MSELoss(), x, target, eps=1e-6)
    assert report.max_rel_error < 1e-7, report


@pytest.mark.parametrize("algorithm", ["im2col", "im2col_chwn"])
def test_forward_keeps_the_input_for_backward_not_its_columns(algorithm, rng):
    """The columns are R*S times the input: kept until backward they doubled a
    LeNet-5 epoch's peak memory. What the forward leaves behind is y and x."""
    import tracemalloc

    x = rng.standard_normal((4, 1, 32, 32)).astype("float32")
    weight = rng.standard_normal((6, 1, 5, 5)).astype("float32")
    bias = numpy.zeros(6, "float32")
    tracemalloc.start()
    try:
        y, ctx = ops.conv2d_forward(x, weight, bias, algorithm=algorithm)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    columns = 4 * 25 * 28 * 28 * 4
    assert held < y.nbytes + columns // 4, (held, y.nbytes, columns)
    dx, dweight, _ = ctx.backward(numpy.ones_like(y))
    expected = conv2d_backward_ref(x.astype("float64"), weight.astype("float64"),
                                   numpy.ones(y.shape), (1, 1), ((0, 0), (0, 0)))
    assert_close(dweight, expected[1], 1e-4, 1e-4, "dW")


@given(n=st.integers(1, 3), c=st.integers(1, 3), r=st.integers(1, 4), s=st.integers(1, 4),
       h=st.integers(4, 9), w=st.integers(4, 9), sh=st.integers(1, 3), sw=st.integers(1, 3),
       dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2**16))
def test_copy_windows_as_runs_equals_the_strided_copy(n, c, r, s, h, w, sh, sw, dtype, seed):
    """im2col copies contiguous runs as single void elements: the same bytes as
    copying the overlapping strided view value by value, for any stride (stride
    1 along the width makes runs of a window row; larger strides, runs of 1)."""
    from numpy.lib.stride_tricks import as_strided

    from gpunet.cpu.conv2d import _copy_windows
    base = numpy.random.default_rng(seed).standard_normal((n, c, h, w)).astype(dtype)
    oh, ow = (h - r) // sh + 1, (w - s) // sw + 1
    shape = (n, c, r, s, oh, ow)
    sn, sc, sy, sx = base.strides
    strides = (sn, sc, sy, sx, sy * sh, sx * sw)
    for target in (numpy.full(shape, numpy.nan, dtype),  # contiguous
                   numpy.full((*shape[:-1], ow + 2), numpy.nan, dtype)[..., 1:-1]):  # not
        _copy_windows(target, base, shape, strides)
        numpy.testing.assert_array_equal(target, as_strided(base, shape, strides))


@pytest.mark.parametrize("algorithm", ["im2col", "im2col_chwn", "winograd"])
def test_an_empty_batch_gives_empty_outputs_and_zero_gradients(algorithm):
    weight = numpy.ones((2, 3, 3, 3))
    y, ctx = ops.conv2d_forward(numpy.zeros((0, 3, 8, 8)), weight, numpy.ones(2), 1, 1,
                                algorithm=algorithm)
    assert y.shape == (0, 2, 8, 8)
    dx, dweight, dbias = ctx.backward(y)
    assert dx.shape == (0, 3, 8, 8)
    assert not dweight.any() and dweight.shape == weight.shape
    assert not dbias.any() and dbias.shape == (2,)


# (N, C, H, W, K, R, S, stride, padding, dilation, groups): dilation along one axis
# or both, 'same' padding of a dilated kernel, depthwise (groups = C) with a
# channel multiplier, a dilated 1x1 (no effect), stride and dilation together.
GROUPED_DILATED = [
    (2, 6, 9, 11, 4, 3, 2, (2, 1), (1, 2), (2, 3), 2),
    (1, 4, 7, 7, 6, 3, 3, 1, "same", 2, 1),
    (2, 6, 8, 8, 6, 3, 3, 1, 1, 1, 3),
    (3, 4, 10, 9, 8, 2, 3, (1, 2), 0, (3, 1), 4),
    (1, 3, 9, 8, 3, 3, 3, 2, 2, 2, 3),
    (2, 2, 6, 5, 4, 1, 1, 1, 0, 2, 2),
]


def _torch_conv(x, weight, bias, dy, stride, padding, dilation, groups):
    """PyTorch's y, dx, dweight, dbias (float64)."""
    torch = pytest.importorskip("torch")
    tx, tw, tb = (torch.tensor(a, dtype=torch.float64, requires_grad=True)
                  for a in (x, weight, bias))
    y = torch.nn.functional.conv2d(tx, tw, tb, stride, padding, dilation, groups)
    y.backward(torch.tensor(dy, dtype=torch.float64))
    return [a.detach().numpy() for a in (y, tx.grad, tw.grad, tb.grad)]


def _grouped_run(xp, case, rng, dtype):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    x = rng.standard_normal((n, c, h, w))
    weight = rng.standard_normal((k, c // groups, r, s))
    bias = rng.standard_normal(k)
    put = lambda a: xp.asarray(a.astype(dtype))  # noqa: E731
    y, ctx = ops.conv2d_forward(put(x), put(weight), put(bias), stride, padding,
                                dilation=dilation, groups=groups)
    dy = rng.standard_normal(y.shape)
    got = [to_numpy(a) for a in (y, *ctx.backward(put(dy)))]
    return (x, weight, bias, dy), got


@pytest.mark.torch
@pytest.mark.parametrize("case", GROUPED_DILATED, ids=str)
def test_grouped_dilated_conv2d_matches_torch_in_float64(xp, case, rng):
    """Forward and backward of groups and dilation on every path (the xp fixture: CPU
    accelerators on, off, and the CUDA kernels) equal PyTorch's to 1e-10."""
    (x, weight, bias, dy), got = _grouped_run(xp, case, rng, "float64")
    refs = _torch_conv(x, weight, bias, dy, *case[7:])
    for name, g, ref in zip(("y", "dx", "dweight", "dbias"), got, refs):
        assert_close(g, ref, 1e-10, 1e-10, name)


@pytest.mark.torch
@pytest.mark.parametrize("case", GROUPED_DILATED, ids=str)
def test_grouped_dilated_conv2d_float32_within_the_rounding_bound(xp, case, rng):
    """float32 against PyTorch's float64 on the same inputs: a sum of ``m`` products
    of float32-rounded factors is off by at most ``(m + 2) u sum |a| |b|`` (``u =
    2**-24``; the inputs' own rounding adds 2u), ``m`` the reduction length of each
    output: C/groups R S + 1 for y (the bias), K/groups R S for dx, N OH OW for
    dweight and dbias. TF32 is turned off (its 10-bit products have their own
    bound, test_kernels.py)."""
    from gpunet.cuda import runtime
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    allowed = runtime.allow_tf32()
    runtime.set_allow_tf32(False)
    try:
        (x, weight, bias, dy), got = _grouped_run(xp, case, rng, "float32")
    finally:
        runtime.set_allow_tf32(allowed)
    refs = _torch_conv(x, weight, bias, dy, stride, padding, dilation, groups)
    scales = _torch_conv(numpy.abs(x), numpy.abs(weight), numpy.abs(bias), numpy.abs(dy),
                         stride, padding, dilation, groups)
    pixels = n * refs[0].shape[2] * refs[0].shape[3]
    lengths = (c // groups * r * s + 1, k // groups * r * s, pixels, pixels)
    for name, g, ref, scale, m in zip(("y", "dx", "dweight", "dbias"), got, refs, scales,
                                      lengths):
        assert g.dtype == numpy.float32, name
        bound = (m + 2) * 2.0**-24 * scale
        excess = numpy.abs(g - ref) - bound
        assert excess.max() <= 0, f"{name}: {excess.max():.3e} over the bound"


def test_dilation_on_numpy_takes_the_xp_path_groups_the_accelerators(rng):
    """The CPU accelerators have no dilation: a dilated convolution on NumPy runs the
    im2col reference even with them on; an undilated grouped one runs them, a group
    at a time."""
    from gpunet.ops import conv2d as xp_conv2d
    x = rng.standard_normal((2, 4, 8, 8))
    weight = rng.standard_normal((6, 2, 3, 3))
    enabled = ops.cpu_accelerators_enabled()
    ops.set_cpu_accelerators_enabled(True)
    try:
        _, ctx = ops.conv2d_forward(x, weight[:, :1].repeat(4, 1), dilation=2)
        assert isinstance(ctx, xp_conv2d.Im2colContext)
        _, ctx = ops.conv2d_forward(x, weight, groups=2, dilation=(1, 2))
        assert isinstance(ctx, xp_conv2d.GroupedContext)
        assert all(isinstance(part, xp_conv2d.Im2colContext) for part in ctx.contexts)
        _, ctx = ops.conv2d_forward(x, weight, groups=2)
        assert len(ctx.contexts) == 2
        assert all(part.__class__.__module__.startswith("gpunet.cpu.")
                   for part in ctx.contexts)
    finally:
        ops.set_cpu_accelerators_enabled(enabled)
    with pytest.raises(ValueError, match="algorithm='im2col'.*no dilation"):
        ops.conv2d_forward(x, weight, groups=2, dilation=2, algorithm="im2col")


@pytest.mark.parametrize("call,match", [
    (lambda: nn.Conv2d(4, 6, 3, groups=4), r"groups: expected a divisor of out_channels=6"),
    (lambda: nn.Conv2d(5, 6, 3, groups=2), r"groups: expected a divisor of in_channels=5"),
    (lambda: nn.Conv2d(4, 6, 3, groups=0), r"groups: expected a positive int, got 0"),
    (lambda: nn.Conv2d(4, 6, 3, dilation=0), r"dilation: expected a positive int, got 0"),
    (lambda: nn.Conv2d(4, 6, 3, dilation=(1, -1)), r"dilation\[1\]: expected a positive"),
    (lambda: ops.conv2d_forward(numpy.zeros((1, 5, 6, 6)), numpy.zeros((4, 5, 3, 3)),
                                groups=2), r"groups: expected a divisor .* 5 channels"),
    (lambda: ops.conv2d_forward(numpy.zeros((1, 4, 6, 6)), numpy.zeros((3, 2, 3, 3)),
                                groups=2), r"groups: expected a divisor .* 3 filters"),
    (lambda: ops.conv2d_forward(numpy.zeros((1, 4, 6, 6)), numpy.zeros((4, 4, 3, 3)),
                                groups=2), r"x has 4 channels .* weight expects 8"),
    (lambda: ops.conv2d_forward(numpy.zeros((1, 4, 6, 6)), numpy.zeros((4, 4, 3, 3)),
                                dilation=0), r"dilation: expected a positive int, got 0"),
    (lambda: ops.conv2d_forward(numpy.zeros((1, 1, 4, 4)), numpy.zeros((1, 1, 3, 3)),
                                dilation=2), r"kernel height 5 is larger than the padded"),
])
def test_groups_and_dilation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.torch
def test_grouped_dilated_layer_has_torch_weight_shape_and_output(xp, rng):
    torch = pytest.importorskip("torch")
    layer = nn.Conv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 3),
                      groups=2).to(dtype="float64")
    assert layer.weight.data.shape == (4, 3, 3, 2)
    assert sum(p.data.size for p in layer.parameters()) == 4 * 3 * 3 * 2 + 4
    assert "dilation=(2, 3), groups=2" in repr(layer)
    x = rng.standard_normal((2, 6, 9, 11))
    weight, bias = to_numpy(layer.weight.data), to_numpy(layer.bias.data)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight),
                                     torch.from_numpy(bias), (2, 1), (1, 2), (2, 3), 2)
    assert_close(layer(xp.asarray(x)), ref.numpy(), 1e-10, 1e-10)


def test_gradcheck_through_a_grouped_dilated_layer(rng):
    """Centred differences agree with the backward of a small grouped, dilated,
    strided, padded Conv2d, input gradient included."""
    from gpunet import gradcheck
    from gpunet.losses import MSELoss
    layer = nn.Conv2d(4, 6, 3, stride=(1, 2), padding=2, dilation=(2, 1), groups=2)
    x = rng.standard_normal((2, 4, 6, 7))
    model = nn.Sequential(layer, nn.Flatten())
    target = rng.standard_normal((2, 6 * 6 * 5))
    assert model(x.astype(numpy.float32)).shape == target.shape
    report = gradcheck(model, MSELoss(), x, target, eps=1e-6)
    assert report.max_rel_error < 1e-7, report
