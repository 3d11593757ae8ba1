"""Max and average pooling against the naive loop reference."""
import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpunet import nn, ops

from .helpers import assert_close, pool_ref

# (N, C, H, W, kernel, stride, padding): overlapping 3/2, windows over the
# border, stride 3, padding, rectangular windows, N=1.
AWKWARD = [
    (1, 1, 4, 4, (2, 2), (2, 2), (0, 0)),
    (2, 3, 7, 7, (3, 3), (2, 2), (0, 0)),
    (1, 2, 8, 5, (3, 3), (2, 2), (1, 1)),
    (2, 1, 9, 9, (3, 3), (3, 3), (1, 1)),
    (1, 2, 5, 6, (2, 3), (1, 2), (1, 1)),
    (3, 2, 5, 5, (5, 5), (1, 1), (2, 2)),
    (1, 1, 6, 7, (2, 2), (3, 3), (0, 0)),
]
FORWARD = {"max": ops.max_pool2d_forward, "avg": ops.avg_pool2d_forward}


def _check(xp, mode, case, rng):
    n, c, h, w, kernel, stride, pad = case
    x = rng.standard_normal((n, c, h, w))
    y, ctx = FORWARD[mode](xp.asarray(x), kernel, stride, pad)
    ref_y, ref_backward = pool_ref(x, kernel, stride, pad, mode)
    assert_close(y, ref_y, 1e-12, 1e-12, f"{mode} y")
    dy = rng.standard_normal(ref_y.shape)
    assert_close(ctx.backward(xp.asarray(dy))[0], ref_backward(dy), 1e-12, 1e-12,
                 f"{mode} dx")


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", AWKWARD, ids=str)
def test_pool_matches_naive_reference(xp, mode, case, rng):
    _check(xp, mode, case, rng)


@given(mode=st.sampled_from(["max", "avg"]), n=st.integers(1, 2), c=st.integers(1, 3),
       h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), seed=st.integers(0, 2**16),
       data=st.data())
def test_pool_random_shapes(mode, n, c, h, w, kh, kw, sh, sw, seed, data):
    ph = data.draw(st.integers(0, kh // 2))
    pw = data.draw(st.integers(0, kw // 2))
    if h + 2 * ph < kh or w + 2 * pw < kw:
        with pytest.raises(ValueError, match="larger than the padded input"):
            FORWARD[mode](numpy.zeros((n, c, h, w)), (kh, kw), (sh, sw), (ph, pw))
        return
    _check(numpy, mode, (n, c, h, w, (kh, kw), (sh, sw), (ph, pw)),
           numpy.random.default_rng(seed))


def test_max_pool_ties_send_gradient_to_one_input(xp):
    """A constant image: every window is a tie; each window's gradient must land
    on exactly one input, the first maximum (top-left) of the window."""
    x = xp.ones((1, 1, 4, 4))
    y, ctx = ops.max_pool2d_forward(x, 2, 2)
    dx = ctx.backward(xp.ones_like(y))[0]
    expected = numpy.zeros((4, 4))
    expected[::2, ::2] = 1
    assert_close(dx[0, 0], expected, 0, 0)
    # overlapping windows: the total gradient is conserved, one input per window
    x = xp.zeros((1, 1, 5, 5))
    y, ctx = ops.max_pool2d_forward(x, 3, 2)
    dx = ctx.backward(xp.ones_like(y))[0]
    assert float(dx.sum()) == y.size
    assert int((dx != 0).sum()) == 4  # windows start at (0,0),(0,2),(2,0),(2,2)


def test_pooling_does_affect_backprop():
    """Quiz: pooling has no parameters but it does change the derivatives."""
    x = numpy.array([[[[1.0, 3.0], [2.0, 9.0]]]])
    pool = nn.MaxPool2d(2)
    pool(x)
    assert_close(pool.backward(numpy.ones((1, 1, 1, 1))), [[[[0, 0], [0, 1]]]], 0, 0)
    avg = nn.AvgPool2d(2)
    avg(x)
    assert_close(avg.backward(numpy.ones((1, 1, 1, 1))), numpy.full((1, 1, 2, 2), 0.25), 0, 0)


def test_notes_average_pooling_example():
    x = numpy.array([[1, 3, 2, 1], [2, 9, 1, 1], [1, 4, 2, 3], [5, 6, 1, 2]], "float32")
    y = nn.AvgPool2d(2, 2)(x[None, None])
    assert_close(y[0, 0], [[3.75, 1.25], [4, 2]], 0, 0)
    assert_close(nn.MaxPool2d(2, 2)(x[None, None])[0, 0], [[9, 2], [6, 3]], 0, 0)


def test_stride_defaults_to_kernel_and_float32_is_kept(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype("float32")
    for pool in (nn.MaxPool2d(3), nn.AvgPool2d(3)):
        assert pool.stride == (3, 3)
        y = pool(x)
        assert y.shape == (2, 3, 2, 2) and y.dtype == numpy.float32
        assert pool.backward(numpy.ones_like(y)).dtype == numpy.float32


def test_padding_larger_than_half_the_window_is_rejected():
    with pytest.raises(ValueError, match="padding"):
        ops.max_pool2d_forward(numpy.zeros((1, 1, 4, 4)), 2, 2, 2)


@pytest.mark.torch
@pytest.mark.parametrize("case", AWKWARD, ids=str)
def test_pool_matches_torch(case, rng):
    torch = pytest.importorskip("torch")
    n, c, h, w, kernel, stride, pad = case
    x = rng.standard_normal((n, c, h, w))
    t = torch.from_numpy(x)
    assert_close(ops.max_pool2d_forward(x, kernel, stride, pad)[0],
                 torch.nn.functional.max_pool2d(t, kernel, stride, pad).numpy(), 0, 0)
    assert_close(ops.avg_pool2d_forward(x, kernel, stride, pad)[0],
                 torch.nn.functional.avg_pool2d(t, kernel, stride, pad).numpy(), 1e-12, 1e-12)


def test_max_pool_with_a_window_wider_than_uint8_offsets():
    """Offsets are stored as uint8 when they fit; a 1x300 window needs more."""
    rng = numpy.random.default_rng(3)
    x = rng.standard_normal((1, 1, 2, 300))
    y, ctx = ops.max_pool2d_forward(x, (1, 300), (1, 300))
    ref_y, ref_backward = pool_ref(x, (1, 300), (1, 300), (0, 0), "max")
    assert_close(y, ref_y, 0, 0)
    dy = rng.standard_normal(ref_y.shape)
    assert_close(ctx.backward(dy)[0], ref_backward(dy), 0, 0)
