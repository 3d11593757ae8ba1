"""Toeplitz (banded-matrix) convolution: forward and backward against the naive
loop reference in float64, on awkward and random shapes; float32 against im2col;
the cost model's choices."""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpunet import nn, ops
from gpunet.gradcheck import gradcheck
from gpunet.losses import MSELoss
from gpunet.ops import toeplitz

from .helpers import assert_close, conv2d_backward_ref, conv2d_ref

# (N, C, H, W, K, kernel (R, S), stride, padding): non-square kernels and strides,
# asymmetric "same" padding, outputs of one pixel, a stride that skips columns.
CASES = [
    (2, 1, 8, 8, 3, (5, 5), 1, 0),
    (1, 3, 7, 9, 2, (3, 2), (2, 1), 1),
    (2, 2, 6, 5, 4, (2, 4), 1, "same"),
    (1, 2, 5, 5, 1, (5, 5), 1, 0),
    (3, 1, 9, 11, 2, (3, 3), (1, 3), (0, 2)),
    (1, 1, 4, 6, 2, (1, 1), 2, 0),
]


def _compare(case, rng, bias=True, input_grad=True):
    n, c, h, w, k, kernel, stride, padding = case
    x, weight = rng.standard_normal((n, c, h, w)), rng.standard_normal((k, c, *kernel))
    b = rng.standard_normal(k) if bias else None
    y, ctx = ops.conv2d_forward(x, weight, b, stride, padding, algorithm="toeplitz")
    assert all(isinstance(part, toeplitz.ToeplitzContext) for part in ctx.contexts)
    stride = (stride, stride) if isinstance(stride, int) else stride
    pads = ops.normalize_padding(padding, kernel, stride)
    assert_close(y, conv2d_ref(x, weight, b, stride, pads), 1e-10, 1e-10, "y")
    dy = rng.standard_normal(y.shape)
    dx, dw, db = ops.conv2d_backward(dy, ctx, input_grad=input_grad)
    ref_dx, ref_dw, ref_db = conv2d_backward_ref(x, weight, dy, stride, pads)
    assert_close(dw, ref_dw, 1e-10, 1e-10, "dweight")
    assert (db is None) if not bias else assert_close(db, ref_db, 1e-10, 1e-10, "dbias") is None
    if input_grad:
        assert dx.shape == x.shape
        assert_close(dx, ref_dx, 1e-10, 1e-10, "dx")
    else:
        assert dx is None


@pytest.mark.parametrize("case", CASES, ids=str)
def test_toeplitz_matches_naive_reference(case, rng):
    _compare(case, rng)
    _compare(case, rng, bias=False, input_grad=False)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), k=st.integers(1, 3), h=st.integers(1, 9),
       w=st.integers(1, 9), r=st.integers(1, 4), s=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), pad=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_toeplitz_random_shapes(n, c, k, h, w, r, s, sh, sw, pad, seed):
    if h + 2 * pad < r or w + 2 * pad < s:
        return
    _compare((n, c, h, w, k, (r, s), (sh, sw), pad), numpy.random.default_rng(seed))


def test_float32_matches_im2col_at_lenet_shapes(rng):
    for shape, w_shape in [((8, 1, 32, 32), (6, 1, 5, 5)), ((8, 6, 14, 14), (16, 6, 5, 5))]:
        x = rng.standard_normal(shape).astype(numpy.float32)
        weight = (rng.standard_normal(w_shape) / 5).astype(numpy.float32)
        bias = rng.standard_normal(w_shape[0]).astype(numpy.float32)
        outputs = {}
        for algorithm in ("im2col", "toeplitz"):
            y, ctx = ops.conv2d_forward(x, weight, bias, algorithm=algorithm)
            outputs[algorithm] = (y, *ops.conv2d_backward(numpy.cos(y), ctx))
        for got, ref in zip(outputs["toeplitz"], outputs["im2col"]):
            assert got.dtype == numpy.float32
            # both round in float32, summing in different orders
            scale = float(numpy.abs(ref).max())
            assert float(numpy.abs(got - ref).max()) < 2e-6 * scale


def test_gradcheck_through_a_toeplitz_layer(rng):
    """A Conv2d with few filters takes the Toeplitz path and passes the float64
    gradient check, input gradient included."""
    layer = nn.Conv2d(2, 3, 3, stride=(1, 2), padding=1)
    x = rng.standard_normal((2, 2, 6, 7))  # padded width 9: three kernel widths
    _, ctx = ops.conv2d_forward(x, layer.weight.data.astype(x.dtype), None, (1, 2), 1)
    assert all(isinstance(part, toeplitz.ToeplitzContext) for part in ctx.contexts)
    model = nn.Sequential(layer, nn.Flatten())
    target = rng.standard_normal((2, 3 * 6 * 4))
    report = gradcheck(model, MSELoss(), x, target, eps=1e-6)
    assert report.max_rel_error < 1e-7, report


def test_toeplitz_is_chosen_for_few_filters_with_a_short_band():
    choose = ops.conv.choose_algorithm
    assert choose((128, 6, 14, 14), (16, 6, 5, 5), (1, 1), numpy) == "toeplitz"  # LeNet-5 conv2
    assert choose((8, 4, 7, 7), (8, 4, 3, 3), (1, 1), numpy) == "toeplitz"
    assert choose((128, 1, 32, 32), (6, 1, 5, 5), (1, 1), numpy) == "im2col"  # conv1: band 6.4x
    pads = ((2, 2), (2, 2))
    assert choose((64, 3, 32, 32), (64, 3, 5, 5), (1, 1), numpy, pads) == "im2col"  # 64 filters
    assert choose((64, 3, 9, 9), (64, 3, 5, 5), (1, 1), numpy, pads) == "im2col"
    assert choose((16, 3, 224, 224), (64, 3, 11, 11), (4, 4), numpy, pads) == "im2col"
