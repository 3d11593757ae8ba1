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
# col2im forms W^T dy whole, not by kernel rows, once K >= 2*S*C (AWKWARD: below)
MANY_FILTERS = [(2, 1, 7, 6, 8, 3, 3, 1, 1), (2, 2, 9, 8, 12, 3, 2, 2, 1)]


@pytest.mark.parametrize("algorithm", [None, "im2col", "im2col_chwn"])
@pytest.mark.parametrize("case", AWKWARD + WIDE + MANY_FILTERS, ids=str)
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
