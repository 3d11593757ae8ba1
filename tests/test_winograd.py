"""Winograd convolution: the transforms, then forward/backward against the naive
loop reference (float64, where only rounding differs) and float32 accuracy."""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpunet import nn, ops
from gpunet.cpu import parallel, winograd
from gpunet.gradcheck import gradcheck
from gpunet.losses import MSELoss

from .helpers import assert_close, conv2d_backward_ref, conv2d_ref

TILES = [(m, r) for r in (2, 3, 5) for m in range(1, 9 - r) if m + r - 1 >= 2]


@pytest.mark.parametrize("m, r", TILES, ids=str)
def test_transforms_compute_the_1d_correlation(m, r, rng):
    """``A^T ((G g) * (B^T d)) = y`` with ``y[i] = sum_k g[k] d[i + k]``, exactly."""
    a_t, g, b_t = winograd.transforms(m, r)
    assert (a_t.shape, g.shape, b_t.shape) == ((m, m + r - 1), (m + r - 1, r),
                                               (m + r - 1, m + r - 1))
    taps, tile = rng.standard_normal(r), rng.standard_normal(m + r - 1)
    expected = [taps @ tile[i:i + r] for i in range(m)]
    assert_close(a_t @ ((g @ taps) * (b_t @ tile)), expected, 1e-12, 1e-12)


def test_tile_too_large_is_refused():
    with pytest.raises(ValueError, match="tile size 9"):
        winograd.transforms(5, 5)


@pytest.mark.parametrize("out_size, r, m", [(7, 3, 4), (15, 5, 3), (32, 3, 4), (8, 3, 4),
                                            (2, 3, 2), (10, 5, 3), (4, 5, 2)])
def test_tile_size_minimises_padded_products(out_size, r, m):
    assert winograd.tile_size(out_size, r) == m


# (N, C, H, W, K, kernel, padding): outputs that tiles do not divide, no padding,
# "same" padding, asymmetric padding, 1x1 outputs.
CASES = [
    (2, 3, 7, 7, 4, 3, 1),
    (1, 2, 9, 6, 3, 3, 0),
    (2, 2, 8, 8, 3, 5, 2),
    (1, 3, 6, 7, 2, 5, "same"),
    (2, 1, 5, 5, 2, 3, (2, 0)),
    (1, 2, 3, 3, 2, 3, 0),
    (1, 2, 5, 5, 2, 5, 0),
]


def _compare(case, rng, input_grad=True):
    n, c, h, w, k, r, padding = case
    x, weight = rng.standard_normal((n, c, h, w)), rng.standard_normal((k, c, r, r))
    bias = rng.standard_normal(k)
    y, ctx = ops.conv2d_forward(x, weight, bias, 1, padding, algorithm="winograd")
    assert all(isinstance(part, winograd.WinogradContext) for part in ctx.contexts)
    pads = ops.normalize_padding(padding, (r, r), (1, 1))
    assert_close(y, conv2d_ref(x, weight, bias, (1, 1), pads), 1e-10, 1e-10, "y")
    dy = rng.standard_normal(y.shape)
    dx, dw, db = ctx.backward(dy, input_grad)
    ref_dx, ref_dw, ref_db = conv2d_backward_ref(x, weight, dy, (1, 1), pads)
    assert_close(dw, ref_dw, 1e-10, 1e-10, "dweight")
    assert_close(db, ref_db, 1e-10, 1e-10, "dbias")
    if input_grad:
        assert_close(dx, ref_dx, 1e-10, 1e-10, "dx")
    else:
        assert dx is None


@pytest.mark.parametrize("case", CASES, ids=str)
def test_winograd_matches_naive_reference(case, rng):
    _compare(case, rng)
    _compare(case, rng, input_grad=False)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), k=st.integers(1, 3), h=st.integers(1, 10),
       w=st.integers(1, 10), r=st.sampled_from([3, 5]), pad=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_winograd_random_shapes(n, c, k, h, w, r, pad, seed):
    if min(h, w) + 2 * pad < r:
        return
    _compare((n, c, h, w, k, r, pad), numpy.random.default_rng(seed))


@pytest.mark.parametrize("m, r", [(2, 3), (3, 3), (4, 3), (5, 3), (2, 5), (3, 5)], ids=str)
def test_every_tile_size_matches_im2col(m, r, rng):
    x = rng.standard_normal((2, 3, 11, 9))
    weight, bias = rng.standard_normal((4, 3, r, r)), rng.standard_normal(4)
    pads = ((1, 1), (1, 1))
    y, ctx = winograd.forward(x, weight, bias, pads, (11 + 2 - r + 1, 9 + 2 - r + 1), m)
    y_ref, ctx_ref = ops.conv2d_forward(x, weight, bias, 1, 1, algorithm="im2col")
    assert_close(y, y_ref, 1e-10, 1e-10)
    dy = rng.standard_normal(y.shape)
    for got, ref in zip(winograd.backward(dy, ctx), ctx_ref.backward(dy)):
        assert_close(got, ref, 1e-10, 1e-10)


def test_float32_error_stays_near_1e_5(rng):
    """The price of fewer multiplications: float32 rounding grows with the tile.
    At AlexNet-CIFAR's conv2 and conv4 shapes (batch 4) the relative error against
    float64 stays below 5e-5 in all three outputs (im2col: ~5e-7)."""
    for c, hw, k, r, pad in [(64, 15, 128, 5, 2), (192, 7, 192, 3, 1)]:
        x = rng.standard_normal((4, c, hw, hw))
        weight = rng.standard_normal((k, c, r, r)) / numpy.sqrt(c * r * r)
        y64, ctx64 = ops.conv2d_forward(x, weight, None, 1, pad, algorithm="im2col")
        dy = rng.standard_normal(y64.shape)
        ref = (y64, *ctx64.backward(dy)[:2])
        y32, ctx32 = ops.conv2d_forward(x.astype(numpy.float32), weight.astype(numpy.float32),
                                        None, 1, pad, algorithm="winograd")
        got = (y32, *ctx32.backward(dy.astype(numpy.float32))[:2])
        for name, a, b in zip(("y", "dx", "dweight"), got, ref):
            assert a.dtype == numpy.float32
            error = float(numpy.abs(a - b).max() / numpy.abs(b).max())
            assert error < 5e-5, f"{name}: relative error {error:.1e}"


def test_automatic_choice():
    from gpunet.cpu.conv2d import choose_algorithm as choose
    assert choose((64, 128, 7, 7), (192, 128, 3, 3), (1, 1)) == "winograd"
    assert choose((64, 64, 15, 15), (128, 64, 5, 5), (1, 1)) == "winograd"
    # few channels, small maps: one GEMM over the batch
    assert choose((128, 6, 14, 14), (16, 6, 5, 5), (1, 1)) == "im2col_chwn"
    big = (64, 64, 40, 40)
    assert choose(big, (128, 64, 3, 3), (2, 2)) == "im2col"  # stride 2
    assert choose(big, (128, 64, 3, 5), (1, 1)) == "im2col"  # not square
    assert choose(big, (128, 64, 7, 7), (1, 1)) == "im2col"  # 7x7
    assert choose((64, 64, 15, 15), (128, 64, 7, 7), (1, 1)) == "im2col_chwn"


def test_bad_algorithm_requests_are_refused(rng):
    x, weight = rng.standard_normal((1, 2, 8, 8)), rng.standard_normal((3, 2, 3, 3))
    with pytest.raises(ValueError, match="needs stride 1.*stride=\\(2, 2\\)"):
        ops.conv2d_forward(x, weight, stride=2, algorithm="winograd")
    with pytest.raises(ValueError, match="algorithm: expected .*'fft'"):
        ops.conv2d_forward(x, weight, algorithm="fft")
    y, ctx = ops.conv2d_forward(x, weight, algorithm="winograd")
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 3, 6, 6\), got \(1, 3, 6, 5\)"):
        ctx.backward(numpy.zeros((1, 3, 6, 5)))


def test_gradcheck_through_a_winograd_layer(rng):
    """A Conv2d wide enough to take the Winograd path passes the float64 gradient check."""
    layer = nn.Conv2d(32, 32, 3, padding=1)
    x = rng.standard_normal((1, 32, 4, 4))
    _, ctx = ops.conv2d_forward(x, layer.weight.data.astype(x.dtype))
    assert all(isinstance(part, winograd.WinogradContext) for part in ctx.contexts)
    model = nn.Sequential(layer, nn.Flatten())
    target = rng.standard_normal((1, 32 * 16))
    report = gradcheck(model, MSELoss(), x, target, eps=1e-6, max_per_param=40)
    assert report.max_rel_error < 1e-7, report


def test_chunked_products_match_the_reference(rng, monkeypatch):
    """The transform-domain products are built a few tile columns at a time when
    they would be large; with tiny chunks (including a short last one) nothing
    changes but the rounding."""
    monkeypatch.setattr(parallel, "num_threads", lambda: 1)
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 4 * 36 * 4 * 7)  # 7 columns of 4 filters
    chunks = list(winograd._column_chunks(20, 36 * 4 * 4))
    assert len(chunks) == 3 and chunks[-1] == slice(14, 20)
    # the case below: F(5x5, 3x3) (49 products), 2x2 tiles x 2 images, 4 filters
    assert winograd.tile_size(9, 3) == 5
    assert len(list(winograd._column_chunks(8, 49 * 4 * 4))) == 2
    _compare((2, 3, 9, 8, 4, 3, 1), rng)
    _compare((2, 3, 9, 8, 4, 3, 1), rng, input_grad=False)


def test_threads_share_the_chunk_budget(monkeypatch):
    """Threads build their products at the same time: each gets its share."""
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(parallel, "num_threads", lambda: 1)
    assert len(list(winograd._column_chunks(10, 100))) == 1
    monkeypatch.setattr(parallel, "num_threads", lambda: 2)
    assert len(list(winograd._column_chunks(10, 100))) == 2
