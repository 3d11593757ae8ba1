"""Max and average pooling against the naive loop reference."""
import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpunet import nn, ops

from .helpers import assert_close, pool_out_ref, pool_ref

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


def _check(xp, mode, case, rng, **options):
    n, c, h, w, kernel, stride, pad = case
    x = rng.standard_normal((n, c, h, w))
    y, ctx = FORWARD[mode](xp.asarray(x), kernel, stride, pad, **options)
    ref_y, ref_backward = pool_ref(x, kernel, stride, pad, mode, **options)
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
       ceil_mode=st.booleans(), count_include_pad=st.booleans(), data=st.data())
def test_pool_random_shapes(mode, n, c, h, w, kh, kw, sh, sw, seed, ceil_mode,
                            count_include_pad, data):
    ph = data.draw(st.integers(0, kh // 2))
    pw = data.draw(st.integers(0, kw // 2))
    if h + 2 * ph < kh or w + 2 * pw < kw:
        with pytest.raises(ValueError, match="larger than the padded input"):
            FORWARD[mode](numpy.zeros((n, c, h, w)), (kh, kw), (sh, sw), (ph, pw))
        return
    options = {"ceil_mode": ceil_mode}
    if mode == "avg":
        options["count_include_pad"] = count_include_pad
    _check(numpy, mode, (n, c, h, w, (kh, kw), (sh, sw), (ph, pw)),
           numpy.random.default_rng(seed), **options)


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


# -- ceil_mode and count_include_pad (issue 28, item 2) ------------------------------------
# (N, C, H, W, kernel, stride, padding): odd sizes, windows over the bottom/right
# border in ceil mode, a last window that would start in the right padding (dropped:
# H=5, k=2, s=2, p=1 gives 3 rows, not 4), stride 3, rectangular windows.
CEIL_CASES = [
    (1, 1, 5, 5, (2, 2), (2, 2), (1, 1)),   # ceil's 4th window would start in the padding
    (2, 3, 7, 7, (3, 3), (2, 2), (0, 0)),   # 3/2 pooling: exact either way
    (1, 2, 6, 6, (3, 3), (2, 2), (0, 0)),   # ceil adds a window over the border
    (2, 1, 8, 7, (3, 3), (3, 3), (1, 1)),   # stride 3, overhang on the right only
    (1, 2, 5, 6, (2, 3), (1, 2), (1, 1)),   # rectangular, stride 1 rows
    (1, 1, 9, 5, (3, 2), (3, 2), (1, 0)),   # stride 3 rows, 2-wide pairs
    (3, 2, 4, 4, (2, 2), (3, 3), (0, 0)),   # stride > kernel: gaps and an overhang
]
OPTIONS = [  # (mode, ceil_mode, count_include_pad)
    ("max", True, True),
    ("avg", True, True), ("avg", True, False), ("avg", False, False),
]


def _options(mode, ceil_mode, count_include_pad):
    return {"ceil_mode": ceil_mode} if mode == "max" else {
        "ceil_mode": ceil_mode, "count_include_pad": count_include_pad}


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("case", CEIL_CASES, ids=str)
def test_pool_options_match_naive_reference(xp, options, case, rng):
    """Every path (the CPU accelerators, the textbook xp path, CuPy's kernels) against
    the loop reference, which reads PyTorch's rules directly (tests/helpers.py)."""
    mode = options[0]
    n, c, h, w, kernel, stride, pad = case
    x = rng.standard_normal((n, c, h, w))
    y, ctx = FORWARD[mode](xp.asarray(x), kernel, stride, pad, **_options(*options))
    ref_y, ref_backward = pool_ref(x, kernel, stride, pad, mode, options[1], options[2])
    assert_close(y, ref_y, 1e-12, 1e-12, f"{options} y")
    dy = rng.standard_normal(ref_y.shape)
    assert_close(ctx.backward(xp.asarray(dy))[0], ref_backward(dy), 1e-12, 1e-12,
                 f"{options} dx")


def test_ceil_mode_output_size_and_divisors():
    """H=W=5, k=2, s=2, p=1: floor gives 3 windows a side; ceil's 4th would start at
    input row 5, in the right padding, so it is dropped (3 again). H=W=6, k=3, s=2:
    ceil adds a 3rd window over rows 4..6 whose last row is beyond the input; its
    divisor is 2 (rows 4, 5), with or without count_include_pad, as there is no padding."""
    x = numpy.ones((1, 1, 5, 5))
    assert ops.max_pool2d_forward(x, 2, 2, 1, ceil_mode=True)[0].shape == (1, 1, 3, 3)
    y = ops.avg_pool2d_forward(numpy.ones((1, 1, 6, 6)), 3, 2, ceil_mode=True)[0]
    assert y.shape == (1, 1, 3, 3)
    assert_close(y, numpy.ones((1, 1, 3, 3)), 0, 0, "a mean of ones")
    # with padding 1: the corner window (rows -1..1) holds 4 inputs of 9 positions
    y = ops.avg_pool2d_forward(numpy.ones((1, 1, 6, 6)), 3, 2, 1, ceil_mode=True)[0]
    assert y.shape == (1, 1, 4, 4)  # windows start at -1, 1, 3, 5: the last starts inside
    # the last window covers rows 5..7: row 5 an input, 6 the padding, 7 beyond it
    expected_side = numpy.array([2 / 3, 1, 1, 1 / 2])
    assert_close(y[0, 0], numpy.outer(expected_side, expected_side), 1e-15, 0, "divisors")
    y = ops.avg_pool2d_forward(numpy.ones((1, 1, 6, 6)), 3, 2, 1, ceil_mode=True,
                               count_include_pad=False)[0]
    assert_close(y, numpy.ones((1, 1, 4, 4)), 1e-15, 0, "inputs only")


def _torch_pool(torch, mode, x, dy, kernel, stride, pad, options):
    t = torch.from_numpy(x).requires_grad_(True)
    pool = torch.nn.functional.max_pool2d if mode == "max" else torch.nn.functional.avg_pool2d
    y = pool(t, kernel, stride, pad, **_options(*options))
    y.backward(torch.from_numpy(dy))
    return y.detach().numpy(), t.grad.numpy()


# every kernel 2-3, stride 1-3, padding 0-1 (at most half the kernel) on odd and even sizes
SWEEP = [(1, 2, h, w, (k, k), (s, s), (p, p)) for h, w in ((5, 7), (6, 5)) for k in (2, 3)
         for s in (1, 2, 3) for p in range(k // 2 + 1)]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("options", OPTIONS + [("max", False, True), ("avg", False, True)],
                         ids=str)
def test_pool_options_match_torch(xp, options, dtype):
    """Forward and backward against PyTorch over the sweep: float64 to 1e-10; float32
    to the bound rounding allows each side (u = 2^-24): a window's m <= c inputs summed
    (m - 1 roundings of partial sums <= m max|x|) and divided by c (one or two more)
    err by at most (m + 1) u max|x| <= (R S + 1) u max|x|; dx sums the shares dy / c
    of the t <= ceil(R/sh) ceil(S/sw) windows covering it: (t + 1) t u max|dy|.
    The two implementations may err in opposite directions: twice that."""
    torch = pytest.importorskip("torch")
    mode = options[0]
    rng = numpy.random.default_rng(28)
    for case in SWEEP:
        n, c, h, w, kernel, stride, pad = case
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        out = (pool_out_ref(*axis, options[1]) for axis in zip((h, w), kernel, stride, pad))
        dy = rng.standard_normal((n, c, *out)).astype(dtype)
        ref_y, ref_dx = _torch_pool(torch, mode, x, dy, kernel, stride, pad, options)
        y, ctx = FORWARD[mode](xp.asarray(x), kernel, stride, pad, **_options(*options))
        dx = ctx.backward(xp.asarray(dy))[0]
        assert y.dtype == dx.dtype == numpy.dtype(dtype)
        if dtype == "float64":
            tol_y = tol_dx = 1e-10
        else:
            u = 2.0 ** -24
            t = -(-kernel[0] // stride[0]) * -(-kernel[1] // stride[1])
            tol_y = 2 * (kernel[0] * kernel[1] + 1) * u * numpy.abs(x).max()
            tol_dx = 2 * (t + 1) * t * u * numpy.abs(dy).max()
        assert_close(y, ref_y, 0, tol_y, f"{case} y")
        assert_close(dx, ref_dx, 0, tol_dx, f"{case} dx")


@pytest.mark.parametrize("layer", [
    nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    nn.AvgPool2d(3, 2, 1, ceil_mode=True),
    nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
    nn.AvgPool2d((2, 3), (3, 2), (1, 1), False, False),
], ids=repr)
def test_pool_options_pass_gradcheck(layer, rng):
    """Centred differences through a conv, the pooling layer and a linear head agree
    with backward, for the parameters and the input (the ceil windows over the border
    included: 6x6 with k=3, s=2, p=1 makes 4x4)."""
    import gpunet
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), layer, nn.Flatten(),
                          nn.Linear(3 * 4 * 4 if layer.ceil_mode else 3 * 3 * 3, 4))
    x = rng.standard_normal((2, 2, 6, 6))
    y = rng.integers(0, 4, 2)
    report = gpunet.gradcheck(model, gpunet.losses.SoftmaxCrossEntropy(), x, y)
    assert report.passed, str(report)


def test_pool_layers_take_torch_names_and_check_them():
    pool = nn.AvgPool2d(3, 2, 1, True, False)  # PyTorch's positional order
    assert (pool.ceil_mode, pool.count_include_pad) == (True, False)
    assert "ceil_mode=True, count_include_pad=False" in repr(pool)
    assert "ceil_mode=True" in repr(nn.MaxPool2d(2, ceil_mode=True))
    with pytest.raises(TypeError):
        nn.MaxPool2d(2, 2, 0, True)  # PyTorch's 4th positional is dilation: keyword only
    with pytest.raises(ValueError, match=r"ceil_mode: expected True or False, got 'yes'"):
        nn.MaxPool2d(2, ceil_mode="yes")
    with pytest.raises(ValueError, match=r"count_include_pad: expected True or False, got 0"):
        ops.avg_pool2d_forward(numpy.zeros((1, 1, 4, 4)), 2, count_include_pad=0)
