"""2-D convolution (cross-correlation, as ``Conv2d``) by im2col + GEMM here (image
by image; small outputs' backward over the whole batch in CHWN layout) or by Winograd
(:mod:`.winograd`) where :func:`choose_algorithm` says so, by gpunet's CUDA
kernels on CuPy; and the textbook convolution with the flipped kernel.

Shapes: x ``(N, C, H, W)``, weight ``(K, C, R, S)``, y ``(N, K, OH, OW)`` with
``OH = floor((H + pad_top + pad_bottom - R) / stride_h) + 1``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy

from .. import _checks, parallel
from ..backend import common_array_module
from ..cuda import conv2d as cuda_conv2d
from ..cuda import uses_kernels
from . import winograd


def _kernels(xp, use_kernels, fits: bool = True) -> bool:
    """Whether this call goes to the CUDA kernels: by default, CuPy arrays whose sizes
    the kernels' 32-bit indices cover (``fits``)."""
    return uses_kernels(xp) and fits if use_kernels is None else bool(use_kernels)


def normalize_padding(padding, kernel_size, stride) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` from an int, a pair, ``"valid"`` or ``"same"``.

    ``"same"`` pads ``f - 1`` in total, the extra pixel of an even kernel going
    to the bottom/right as in PyTorch; it requires stride 1.
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0), (0, 0)
        if mode == "same":
            if stride != (1, 1):
                raise ValueError(
                    f"padding='same' requires stride 1, got stride={stride}")
            totals = [f - 1 for f in kernel_size]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise ValueError(f"padding: expected an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = _checks.pair("padding", padding, _checks.non_negative_int)
    return (ph, ph), (pw, pw)


def output_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
    """``floor((n + 2p - f) / s) + 1`` (the notes' formula, padding split in two)."""
    return (size + pad[0] + pad[1] - kernel) // stride + 1


def _check_window(where, x_shape, kernel, pads):
    """The (padded) input must hold at least one window."""
    for axis, (n, f, p) in enumerate(zip(x_shape[2:], kernel, pads)):
        if n + p[0] + p[1] < f:
            dim = "height" if axis == 0 else "width"
            raise ValueError(
                f"{where}: kernel {dim} {f} is larger than the padded input {dim} "
                f"{n + p[0] + p[1]} (input {n}, padding {p[0]}+{p[1]}); input shape "
                f"{tuple(x_shape)}")


def pad_input(x, pads, value=0.0):
    """``x`` padded on its last two axes (no copy when there is nothing to pad)."""
    (pt, pb), (pl, pr) = pads
    if pt == pb == pl == pr == 0:
        return x
    xp = common_array_module(x=x)
    return xp.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)


def window_offsets(kernel, stride, out_hw):
    """``(k, rows, cols)`` for each kernel offset ``(r, s)``, ``k = r * S + s``:
    ``x_padded[..., rows, cols]`` is the ``(OH, OW)`` grid of inputs that offset
    touches. Convolution and pooling loop over these (a few dozen at most) instead
    of over pixels."""
    for r in range(kernel[0]):
        rows = slice(r, r + stride[0] * (out_hw[0] - 1) + 1, stride[0])
        for s in range(kernel[1]):
            yield r * kernel[1] + s, rows, slice(s, s + stride[1] * (out_hw[1] - 1) + 1,
                                                stride[1])


def im2col(x, kernel, stride, pads, ones_row: bool = False):
    """Columns ``(N, C*R*S, OH*OW)``: column ``j`` of image ``n`` holds the window of
    output pixel ``j``, so one batched GEMM ``W (K, C*R*S) @ cols`` gives ``y`` as
    ``(N, K, OH*OW)``, already in NCHW order. ``ones_row`` appends a row of ones:
    a bias column beside ``W`` then adds the bias in the same GEMM.

    Built from a strided view of every window, copied once into this layout.
    """
    out_hw = tuple(output_size(n, f, s, p)
                   for n, f, s, p in zip(x.shape[2:], kernel, stride, pads))
    xp = common_array_module(x=x)
    x_padded = xp.ascontiguousarray(pad_input(x, pads))
    n, c = x.shape[:2]
    sn, sc, sh, sw = x_padded.strides
    shape = (n, c, kernel[0], kernel[1], out_hw[0], out_hw[1])
    window = c * kernel[0] * kernel[1]
    cols = xp.empty((n, window + ones_row, out_hw[0] * out_hw[1]), dtype=x.dtype)
    _copy_windows(xp, cols[:, :window].reshape(shape), x_padded, shape,
                  (sn, sc, sh, sw, sh * stride[0], sw * stride[1]))
    if ones_row:
        cols[:, window] = 1
    return cols, out_hw


def im2col_chwn(x, kernel, stride, pads):
    """Columns ``(C*R*S, OH*OW*N)`` with the batch innermost (CHWN): the backward's
    GEMMs against ``dy`` as ``(K, OH*OW*N)`` cover the whole batch, where
    :func:`im2col`'s are one image wide. The input goes to ``(C, H, W, N)`` first,
    so the copy into columns moves runs of ``N`` (or ``OW*N``) values."""
    xp = common_array_module(x=x)
    n, c, h, w = x.shape
    (pt, pb), (pl, pr) = pads
    oh, ow = (output_size(size, f, st, p) for size, f, st, p in zip(x.shape[2:], kernel, stride,
                                                                       pads))
    x_chwn = (xp.zeros if pt or pb or pl or pr else xp.empty)(
        (c, h + pt + pb, w + pl + pr, n), dtype=x.dtype)
    x_chwn[:, pt:pt + h, pl:pl + w] = x.transpose(1, 2, 3, 0)
    sc, sh, sw, sn = x_chwn.strides
    shape = (c, kernel[0], kernel[1], oh, ow, n)
    cols = xp.empty((c * kernel[0] * kernel[1], oh * ow * n), dtype=x.dtype)
    _copy_windows(xp, cols.reshape(shape), x_chwn, shape,
                  (sc, sh, sw, sh * stride[0], sw * stride[1], sn))
    return cols


def _copy_windows(xp, target, base, shape, strides):
    """``target[...] =`` the contiguous array ``base`` seen with ``shape`` and byte
    ``strides`` (every window, overlapping). On NumPy the trailing axes that form
    one contiguous run in both go as single elements of a void dtype: NumPy's
    float copy pays per run, and with stride 1 a run is a window's row, a few
    dozen values (LeNet-5's conv1, 64 images: 311 -> 133 us; AlexNet-CIFAR's
    conv1, 32 images: 624 -> 310 us; LeNet-5's conv2 in CHWN, runs of OW*N:
    155 -> 145 us)."""
    item = base.itemsize
    axes, run = len(shape), 1
    while (axes > 0 and strides[axes - 1] == run * item
           and target.strides[axes - 1] == run * item):
        run *= shape[axes - 1]
        axes -= 1
    if xp.__name__ != "numpy" or run == 1 or axes == 0:
        target[...] = xp.lib.stride_tricks.as_strided(base, shape=shape, strides=strides)
        return
    row = numpy.dtype((numpy.void, run * item))
    runs = numpy.ndarray(shape[:axes], row, buffer=base, strides=strides[:axes])
    target.reshape(*shape[:axes], run).view(row)[..., 0] = runs


def col2im(weight, dy_chwn, x_shape, stride, pads, out_hw):
    """``dx``: the adjoint of :func:`im2col` applied to the columns' gradient
    ``W^T dy``, every entry added back onto its input pixel. ``weight`` is
    ``(K, C, R, S)``, ``dy_chwn`` is ``(K, OH*OW*N)``, ``dx`` is ``x_shape``.

    The product (rows ``(r, s, c)``, columns ``(oh, ow, n)``) is formed one
    kernel row ``r`` at a time, ``S*C`` rows, and added back while it is still in
    cache, where whole it went to memory and back (LeNet-5's conv2: 3.8 MB per
    half batch; interleaved LeNet-5 steps take 0.97-0.98x the time, its conv2
    layer 0.955-0.96x, its conv1 0.935-0.98x). But each of those ``R`` GEMMs reads all of
    ``dy``, ``K`` rows, to save writing and reading ``S*C`` rows: with ``K >=
    2*S*C`` the product is formed whole (AlexNet-CIFAR's conv1, 3 -> 64
    channels: 1.15x the time by kernel rows). Each of the ``R*S`` strided adds
    should move long runs of contiguous values, which matters in NumPy: with
    stride 1 an output row lands on ``OW*N`` contiguous values of a ``(C, H, W,
    N)`` buffer (LeNet-5's conv2: 0.60 -> 0.41 ms per half batch); with a larger
    stride the runs there shrink to ``N``, and an ``(H, W, C, N)`` buffer keeps
    runs of ``C*N``.
    """
    xp = common_array_module(weight=weight, dy_chwn=dy_chwn)
    n, c, h, w = x_shape
    k, _, kernel_h, kernel_w = weight.shape
    (pt, pb), (pl, pr) = pads
    oh, ow = out_hw
    padded_hw = (h + pt + pb, w + pl + pr)
    kernel_rows = 1 if k < 2 * kernel_w * c else kernel_h  # per GEMM
    # W^T's rows (r, s, c), kernel_rows kernel rows to a GEMM
    weight_rows = xp.ascontiguousarray(weight.transpose(2, 3, 1, 0)).reshape(
        kernel_h // kernel_rows, kernel_rows * kernel_w * c, k)
    block = xp.empty((kernel_rows * kernel_w * c, dy_chwn.shape[1]), dtype=dy_chwn.dtype)
    blocks = block.reshape(kernel_rows * kernel_w, c, oh, ow, n)
    runs_along_width = stride[1] == 1
    dx_padded = xp.zeros((c, *padded_hw, n) if runs_along_width else (*padded_hw, c, n),
                         dtype=dy_chwn.dtype)
    for offset, rows, columns in window_offsets(weight.shape[2:], stride, out_hw):
        gemm, within = divmod(offset, len(blocks))
        if within == 0:
            xp.matmul(weight_rows[gemm], dy_chwn, out=block)
        if runs_along_width:
            dx_padded[:, rows, columns] += blocks[within]
        else:
            dx_padded[rows, columns] += blocks[within].transpose(1, 2, 0, 3)
    if runs_along_width:
        return xp.ascontiguousarray(dx_padded[:, pt:pt + h, pl:pl + w].transpose(3, 0, 1, 2))
    return xp.ascontiguousarray(dx_padded[pt:pt + h, pl:pl + w].transpose(3, 2, 0, 1))


# Winograd pays for its transforms once the channel GEMMs are large: measured on
# a 2-core AVX-512 CPU, AlexNet's conv2..conv5 gain 1.3-2x, LeNet's conv2 (6->16)
# loses. Below this C*K, one of the im2col layouts.
WINOGRAD_MIN_CHANNEL_PRODUCT = 32 * 32
WINOGRAD_KERNELS = (3, 5)
# Up to this many output pixels per image, the backward's image-by-image GEMMs
# are thin, and one GEMM over the whole batch in CHWN layout wins despite its
# transposes. Forward + backward on one core, 32-64 images: LeNet-5's conv2
# (100 pixels) 2.81 -> 2.28 ms, a 32->32 5x5 conv on 16x16 35.2 -> 30.3; level
# at 784 pixels (28x28, 16->32: 41.3 -> 40.5); losing at LeNet-5's conv1
# (1 channel, 0.67 -> 2.12) and AlexNet-CIFAR's (1024 pixels, 10.9 -> 18.0).
# The forward stays image by image: its batched GEMM gives NCHW with the bias
# added, where CHWN needs a transpose (one core, 64 images: LeNet-5's conv2
# 724 -> 612 us, 32->32 5x5 on 16x16 12.5 -> 10.0 ms, 16->32 3x3 on 6x6 222 ->
# 156 us; only 3->8 channels on 8x8 lost, 75 -> 126 us).
CHWN_MAX_PIXELS = 256


def choose_algorithm(x_shape, weight_shape, stride, xp, pads=((0, 0), (0, 0))) -> str:
    """The NumPy algorithm for a layer, or ``"im2col"`` on CuPy.

    ``"winograd"`` for stride-1 square 3x3/5x5 kernels with many channels,
    ``"im2col_chwn"`` for small outputs (at most ``CHWN_MAX_PIXELS`` pixels: the
    backward in CHWN layout), ``"im2col"`` otherwise.
    """
    if xp.__name__ != "numpy":
        return "im2col"
    k, c, r, s = weight_shape
    if (stride == (1, 1) and r == s and r in WINOGRAD_KERNELS
            and c * k >= WINOGRAD_MIN_CHANNEL_PRODUCT):
        return "winograd"
    out_hw = [output_size(n, f, st, p) for n, f, st, p in zip(x_shape[2:], (r, s), stride, pads)]
    if out_hw[0] * out_hw[1] <= CHWN_MAX_PIXELS:
        return "im2col_chwn"
    return "im2col"


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, use_kernels=None,
                   algorithm=None):
    """Cross-correlation ``y[n,k] = sum_c,r,s W[k,c,r,s] x[n,c,oh*s+r,ow*s+s'] + b[k]``.

    Returns ``(y, ctx)``; ``ctx`` is what :func:`conv2d_backward` needs. CuPy
    arrays go to the CUDA kernels unless ``use_kernels=False`` or
    ``GPUNET_KERNELS=0``. Otherwise ``algorithm`` picks ``"im2col"`` (a GEMM per
    image over copied windows), ``"im2col_chwn"`` (the same forward, and a
    backward whose GEMMs cover the batch in CHWN layout; both exact to float
    rounding) or ``"winograd"`` (stride 1 only;
    2-4x fewer multiplications, relative error about 1e-5 in float32); ``None``
    lets :func:`choose_algorithm` decide.
    """
    where = "conv2d"
    xp = common_array_module(x=x, weight=weight, bias=bias)
    _checks.float_array(where, "x", x)
    _checks.float_array(where, "weight", weight)
    _checks.rank(where, "x", x, 4, "(N, C, H, W)")
    _checks.rank(where, "weight", weight, 4, "(K, C, R, S)")
    _checks.same_dtype(where, x=x, weight=weight, bias=bias)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{where}: x has {x.shape[1]} channels (shape {tuple(x.shape)}) but weight "
            f"expects {weight.shape[1]} (shape {tuple(weight.shape)})")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(
            f"{where}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    stride = _checks.pair("stride", stride)
    kernel = weight.shape[2:]
    pads = normalize_padding(padding, kernel, stride)
    _check_window(where, x.shape, kernel, pads)
    out_hw = tuple(output_size(n, f, s, p) for n, f, s, p in zip(x.shape[2:], kernel, stride,
                                                                 pads))
    if _kernels(xp, use_kernels, cuda_conv2d.fits(x.shape, weight.shape, out_hw)):
        return cuda_conv2d.forward(x, weight, bias, stride, pads, out_hw)
    if algorithm is None:
        algorithm = choose_algorithm(x.shape, weight.shape, stride, xp, pads)
    if algorithm not in ("im2col", "im2col_chwn", "winograd"):
        raise ValueError("algorithm: expected None, 'im2col', 'im2col_chwn' or 'winograd', "
                         f"got {algorithm!r}")
    if algorithm == "winograd" and (stride != (1, 1) or weight.shape[2] != weight.shape[3]):
        raise ValueError(f"{where}: algorithm='winograd' needs stride 1 and a square "
                         f"kernel, got stride={stride}, kernel={tuple(weight.shape[2:])}")

    def forward(x_part):
        return _forward(algorithm, x_part, weight, bias, stride, pads, out_hw)
    if xp.__name__ == "numpy":
        multiply_adds = x.shape[0] * weight.size * out_hw[0] * out_hw[1]
        # Each chunk repeats the work on the filters (Winograd's filter transforms,
        # a dW of its own): a chunk must hold a quarter of the filters' size in
        # input. VGG-16's conv5_2 at batch 4 (2.4M weights, 100K inputs an image)
        # ran 63 -> 95 ms in two chunks; AlexNet-CIFAR's conv4 (332K, 9.4K) gains.
        min_rows = -(-weight.size // (4 * max(1, math.prod(x.shape[1:]))))
        return parallel.forward_in_chunks(forward, x, multiply_adds // parallel.GEMM_MACS_PER_WORK,
                                          (x.shape[0], weight.shape[0], *out_hw), min_rows)
    return forward(x)


class Im2colContext(NamedTuple):
    """What the im2col backward needs; ``chwn``: the backward's GEMMs run over the
    whole batch on :func:`im2col_chwn`'s columns, else image by image on
    :func:`im2col`'s.

    The input is kept, not its columns: the backward copies them again. They are
    R*S times the input's size (LeNet-5: 10.4 and 7.7 MB at batch 128), and kept
    from forward to backward they pushed a training step's data out of the CPU's
    cache; dropped at once, their buffer is reused while still in cache. LeNet-5's
    step: convolutions forward 2.2 -> 1.75 ms, backward 2.6 -> 2.9 ms, the step
    as fast (paired runs: 0.99-1.01x), and 18 MB less held between the passes.
    """

    x: object
    weight: object
    x_shape: tuple
    stride: tuple
    pads: tuple
    out_hw: tuple
    has_bias: bool
    chwn: bool


def _forward(algorithm, x, weight, bias, stride, pads, out_hw):
    """``(y, ctx)`` by ``algorithm`` for checked arguments."""
    if algorithm == "winograd":
        m = winograd.tile_size(max(out_hw), weight.shape[2])
        return winograd.forward(x, weight, bias, pads, out_hw, m)
    xp = common_array_module(x=x)
    kernel = weight.shape[2:]
    n, k = x.shape[0], weight.shape[0]
    # Image by image (a batched GEMM) rather than one GEMM over the whole batch:
    # y comes out in NCHW order with no transpose, and OpenBLAS runs these
    # shapes faster (AlexNet-CIFAR conv1: forward 11.7 -> 7.6 ms).
    cols, out_hw = im2col(x, kernel, stride, pads, ones_row=bias is not None)
    filters = weight.reshape(k, -1)
    if bias is not None:
        filters = xp.concatenate([filters, bias[:, None]], axis=1)
    y = (filters @ cols).reshape(n, k, *out_hw)
    return y, Im2colContext(x, weight, tuple(x.shape), stride, pads, out_hw,
                            bias is not None, algorithm == "im2col_chwn")


THIN_GEMM_PIXELS = 32


def conv2d_backward(dy, ctx, input_grad: bool = True):
    """``(dx, dweight, dbias)`` for ``dy`` of shape ``(N, K, OH, OW)``; ``dbias`` is
    ``None`` when the forward had no bias, ``dx`` is ``None`` with ``input_grad=False``."""
    if isinstance(ctx, parallel.Chunked):
        return parallel.backward_in_chunks(
            "conv2d", lambda dy_part, ctx_part: conv2d_backward(dy_part, ctx_part, input_grad),
            dy, ctx)
    if isinstance(ctx, cuda_conv2d.ConvContext):
        n, _, _, _, k, _, _, oh, ow = ctx.sizes
        _check_dy_shape(dy, (n, k, oh, ow))
        return cuda_conv2d.backward(dy, ctx, input_grad)
    if isinstance(ctx, winograd.WinogradContext):
        _check_dy_shape(dy, (ctx.x_shape[0], ctx.w_shape[0], *ctx.out_hw))
        return winograd.backward(dy, ctx, input_grad)
    x, weight, x_shape, stride, pads, out_hw, has_bias, chwn = ctx
    xp = common_array_module(dy=dy, weight=weight)  # same device, or a clear TypeError
    n, k = dy.shape[:2]
    _check_dy_shape(dy, (x_shape[0], weight.shape[0], *out_hw))
    cols = (im2col_chwn(x, weight.shape[2:], stride, pads) if chwn
            else im2col(x, weight.shape[2:], stride, pads, ones_row=has_bias)[0])
    # dy as (K, OH*OW*N): the CHWN layout's GEMMs, and col2im's, take it
    dy_chwn = xp.ascontiguousarray(dy.transpose(1, 2, 3, 0)).reshape(k, -1) \
        if chwn or input_grad else None
    if chwn:
        # cols @ dy^T, then transposed: BLAS ran dy @ cols^T 1.7x slower
        dweight = xp.ascontiguousarray((cols @ dy_chwn.T).T).reshape(weight.shape)
        dbias = dy_chwn.sum(axis=1) if has_bias else None
    else:
        # dy (K, OH*OW) @ cols^T image by image, summed over the batch; the ones row
        # of cols gives the bias gradient as the last column. Tiny images make these
        # GEMMs too thin (64 x (256 x 16 @ 16 x 1729): 24 ms), so below
        # THIN_GEMM_PIXELS one GEMM over the whole batch instead (7 ms); from 49
        # pixels up the image-by-image GEMMs win (1.2-9x).
        dy3 = dy.reshape(n, k, out_hw[0] * out_hw[1])
        if dy3.shape[2] >= THIN_GEMM_PIXELS:
            grads = (dy3 @ cols.transpose(0, 2, 1)).sum(axis=0)
        else:
            grads = xp.tensordot(dy3, cols, axes=([0, 2], [0, 2]))
        window = weight[0].size
        dweight = xp.ascontiguousarray(grads[:, :window]).reshape(weight.shape)
        dbias = grads[:, window].copy() if has_bias else None
    if not input_grad:
        return None, dweight, dbias
    return col2im(weight, dy_chwn, x_shape, stride, pads, out_hw), dweight, dbias


def _check_dy_shape(dy, expected):
    if tuple(dy.shape) != tuple(expected):
        raise ValueError(f"conv2d backward: dy must have shape {tuple(expected)}, "
                         f"got {tuple(dy.shape)}")


def correlate2d(image, kernel, mode: str = "valid"):
    """2-D cross-correlation of one image with one kernel (what CNNs call convolution).

    ``mode``: ``"valid"`` (no padding), ``"same"`` (output the input's size) or
    ``"full"`` (every overlap, padding ``f - 1``).
    """
    xp = common_array_module(image=image, kernel=kernel)
    for name, a in (("image", image), ("kernel", kernel)):
        if a.ndim != 2:
            raise ValueError(f"correlate2d: {name} must be 2-D, got shape {tuple(a.shape)}")
    dtype = xp.result_type(image.dtype, kernel.dtype, xp.float32)
    paddings = {"valid": 0, "same": "same",
                "full": (kernel.shape[0] - 1, kernel.shape[1] - 1)}
    if mode not in paddings:
        raise ValueError(f"mode: expected 'valid', 'same' or 'full', got {mode!r}")
    y, _ = conv2d_forward(image[None, None].astype(dtype), kernel[None, None].astype(dtype),
                          padding=paddings[mode])
    return y[0, 0]


def convolve2d(image, kernel, mode: str = "valid"):
    """True 2-D convolution, as in a maths textbook: the kernel is flipped in both
    axes before sliding. Unlike cross-correlation it is associative (in ``"full"``
    mode): ``convolve2d(convolve2d(A, B, "full"), C, "full") ==
    convolve2d(A, convolve2d(B, C, "full"), "full")``."""
    return correlate2d(image, kernel[::-1, ::-1], mode)
