"""The CPU accelerators of 2-D convolution: im2col + GEMM image by image (its
copies moving whole window rows at once), the backward over the whole batch in
CHWN layout for small outputs (at stride 1 from shifted copies of the input and
of ``dy``, not from every window), and Winograd (:mod:`.winograd`) where
:func:`choose_algorithm` says so; each over batch chunks on gpunet's threads
(:mod:`.parallel`). The textbook path they are tested against is
:mod:`gpunet.ops.conv2d`; shapes and arguments are checked there.
"""
from __future__ import annotations

import math

import numpy

from .._context import Context, output_size, pad_input, window_offsets
from . import parallel, winograd

ALGORITHMS = ("im2col", "im2col_chwn", "winograd")


def forward(x, weight, bias, stride, pads, out_hw, algorithm=None):
    """``(y, ctx)`` of the checked arguments of :func:`gpunet.ops.conv2d_forward` on
    NumPy arrays, by ``algorithm`` (``None``: :func:`choose_algorithm`'s)."""
    if algorithm is None:
        algorithm = choose_algorithm(x.shape, weight.shape, stride, pads)
    if x.size == 0 or weight.size == 0:
        algorithm = "im2col"  # nothing to compute: Winograd's tiles would not even reshape

    def forward_chunk(x_part):
        if algorithm == "winograd":
            m = winograd.tile_size(max(out_hw), weight.shape[2])
            return winograd.forward(x_part, weight, bias, pads, out_hw, m)
        return _gemm_forward(x_part, weight, bias, stride, pads, out_hw,
                               algorithm == "im2col_chwn")

    multiply_adds = x.shape[0] * weight.size * out_hw[0] * out_hw[1]
    # Each chunk repeats the work on the filters (Winograd's filter transforms,
    # a dW of its own): a chunk must hold a quarter of the filters' size in
    # input: few images under big filters (VGG-16's conv5_2 at batch 4) ran slower
    # in two chunks, AlexNet-CIFAR's conv4 gains (bench/results/cpu-choices-2026-11.md).
    min_rows = max(1, -(-weight.size // (4 * max(1, math.prod(x.shape[1:])))))  # 0 filters
    return parallel.forward_in_chunks("conv2d", forward_chunk, x,
                                      multiply_adds // parallel.GEMM_MACS_PER_WORK,
                                      (x.shape[0], weight.shape[0], *out_hw), min_rows)


# Winograd does fewer multiplies per output, but its tile transforms cost per
# channel: they pay once the channel GEMMs are large (AlexNet's conv2..conv5 gain,
# LeNet's conv2, 6->16, loses; bench/results/cpu-choices-2026-11.md). Below this
# C*K, one of the im2col layouts.
WINOGRAD_MIN_CHANNEL_PRODUCT = 32 * 32
WINOGRAD_KERNELS = (3, 5)
# Up to this many output pixels per image, the backward's image-by-image GEMMs
# are thin, and one GEMM over the whole batch in CHWN layout wins despite its
# transposes; it breaks even at about 784 pixels (28x28) and loses with one input
# channel. The forward stays image by image: its batched GEMM gives NCHW with the
# bias added, where CHWN needs a transpose. Timings: bench/results/cpu-choices-2026-11.md.
CHWN_MAX_PIXELS = 256


def choose_algorithm(x_shape, weight_shape, stride, pads=((0, 0), (0, 0))) -> str:
    """``"winograd"`` for stride-1 square 3x3/5x5 kernels with many channels,
    ``"im2col_chwn"`` for small outputs (at most ``CHWN_MAX_PIXELS`` pixels: the
    backward in CHWN layout), ``"im2col"`` otherwise."""
    k, c, r, s = weight_shape
    if (stride == (1, 1) and r == s and r in WINOGRAD_KERNELS
            and c * k >= WINOGRAD_MIN_CHANNEL_PRODUCT):
        return "winograd"
    out_hw = [output_size(n, f, st, p) for n, f, st, p in zip(x_shape[2:], (r, s), stride, pads)]
    if out_hw[0] * out_hw[1] <= CHWN_MAX_PIXELS:
        return "im2col_chwn"
    return "im2col"


class GemmContext(Context):
    """What the im2col backward needs; ``chwn``: the backward's GEMMs run over the
    whole batch on :func:`batch_columns`'s columns (at stride 1 with enough
    channels, :func:`weight_gradient_by_kernel_rows`'s shifted copy instead), else
    image by image on :func:`image_columns`'s.

    The input is kept, not its columns: the backward copies them again. They are
    R*S times the input's size (LeNet-5: 10.4 and 7.7 MB at batch 128), and kept
    from forward to backward they pushed a training step's data out of the CPU's
    cache; dropped at once, their buffer is reused while still in cache. The step
    is as fast and holds 18 MB less between the passes (timings:
    bench/results/cpu-choices-2026-11.md).
    """

    __slots__ = ("x", "weight", "stride", "pads", "has_bias", "chwn")

    def __init__(self, x, weight, stride, pads, out_hw, has_bias, chwn):
        super().__init__("conv2d", (x.shape[0], weight.shape[0], *out_hw))
        self.x, self.weight, self.stride, self.pads = x, weight, stride, pads
        self.has_bias, self.chwn = has_bias, chwn

    def _backward(self, dy, input_grad):
        return _gemm_backward(dy, self, input_grad)


def _gemm_forward(x, weight, bias, stride, pads, out_hw, chwn):
    """``(y, ctx)``: the forward of both im2col layouts."""
    kernel = weight.shape[2:]
    n, k = x.shape[0], weight.shape[0]
    # Image by image (a batched GEMM) rather than one GEMM over the whole batch:
    # y comes out in NCHW order with no transpose, and OpenBLAS ran these
    # shapes faster (bench/results/cpu-choices-2026-11.md).
    cols, out_hw = image_columns(x, kernel, stride, pads, ones_row=bias is not None)
    filters = weight.reshape(k, math.prod(weight.shape[1:]))  # no -1: K may be 0
    if bias is not None:
        filters = numpy.concatenate([filters, bias[:, None]], axis=1)
    y = (filters @ cols).reshape(n, k, *out_hw)
    return y, GemmContext(x, weight, stride, pads, out_hw, bias is not None, chwn)


THIN_GEMM_PIXELS = 32
# weight_gradient_by_kernel_rows's GEMMs have C*S rows: with 30 (LeNet-5's conv2)
# and more they beat batch_columns' one GEMM, with 9 and fewer (3 or 1 input
# channels) they lost (bench/results/cpu-step-2026-12-06c.md).
KERNEL_ROWS_MIN_GEMM_ROWS = 16


def _gemm_backward(dy, ctx, input_grad):
    """``(dx, dweight, dbias)``; ``dbias`` is ``None`` when the forward had no bias."""
    x, weight, stride, pads, has_bias, chwn = (ctx.x, ctx.weight, ctx.stride, ctx.pads,
                                               ctx.has_bias, ctx.chwn)
    n, k = dy.shape[:2]
    out_hw = dy.shape[2:]
    # dy as (K, OH*OW*N): the CHWN layout's GEMMs, and input_gradient's, take it
    dy_chwn = numpy.ascontiguousarray(dy.transpose(1, 2, 3, 0)).reshape(k, math.prod(out_hw) * n) \
        if chwn or input_grad else None
    if chwn and stride == (1, 1) and weight.shape[1] * weight.shape[3] >= KERNEL_ROWS_MIN_GEMM_ROWS:
        dweight = weight_gradient_by_kernel_rows(x, dy_chwn, weight.shape[2:], pads, out_hw)
        dbias = dy_chwn.sum(axis=1) if has_bias else None
    elif chwn:
        cols = batch_columns(x, weight.shape[2:], stride, pads)
        # cols @ dy^T, then transposed: BLAS ran dy @ cols^T slower
        dweight = numpy.ascontiguousarray((cols @ dy_chwn.T).T).reshape(weight.shape)
        dbias = dy_chwn.sum(axis=1) if has_bias else None
    else:
        cols = image_columns(x, weight.shape[2:], stride, pads, ones_row=has_bias)[0]
        # dy (K, OH*OW) @ cols^T image by image, summed over the batch; the ones row
        # of cols gives the bias gradient as the last column. Tiny images make these
        # GEMMs too thin (64 x (256 x 16 @ 16 x 1729)), so below THIN_GEMM_PIXELS
        # one GEMM over the whole batch instead; from 49 pixels up the
        # image-by-image GEMMs win (bench/results/cpu-choices-2026-11.md).
        dy3 = dy.reshape(n, k, out_hw[0] * out_hw[1])
        if dy3.shape[2] >= THIN_GEMM_PIXELS:
            grads = (dy3 @ cols.transpose(0, 2, 1)).sum(axis=0)
        else:
            grads = numpy.tensordot(dy3, cols, axes=([0, 2], [0, 2]))
        window = math.prod(weight.shape[1:])  # not weight[0]: K may be 0
        dweight = numpy.ascontiguousarray(grads[:, :window]).reshape(weight.shape)
        dbias = grads[:, window].copy() if has_bias else None
    if not input_grad:
        return None, dweight, dbias
    return input_gradient(weight, dy_chwn, x.shape, stride, pads, out_hw), dweight, dbias


def weight_gradient_by_kernel_rows(x, dy_chwn, kernel, pads, out_hw):
    """``dweight`` ``(K, C, R, S)`` of a stride-1 convolution from ``x`` ``(N, C, H, W)``
    and ``dy_chwn`` ``(K, OH*OW*N)``, without :func:`batch_columns`'s ``C*R*S``
    rows: the input, in CHWN, is copied ``S`` times, shifted by ``s`` columns and
    cut to ``OW`` wide, all padded rows kept (``C*S*H*OW*N`` values, a
    ``H/(R*OH)`` share of the columns; LeNet-5's conv2: 0.28). Kernel row ``r``'s
    columns are then rows ``r .. r+OH`` of that copy, a strided view BLAS reads
    as it is, and one GEMM per kernel row gives ``dweight[:, :, r]``
    (bench/results/cpu-step-2026-12-06c.md)."""
    n, c, h, w = x.shape
    kernel_h, kernel_w = kernel
    (pt, pb), (pl, pr) = pads
    oh, ow = out_hw
    padded_h = h + pt + pb
    k = dy_chwn.shape[0]
    x_chwn = (numpy.zeros if pt or pb or pl or pr else numpy.empty)(
        (c, padded_h, w + pl + pr, n), dtype=x.dtype)
    x_chwn[:, pt:pt + h, pl:pl + w] = x.transpose(1, 2, 3, 0)
    shifted = numpy.empty((c, kernel_w, padded_h, ow, n), dtype=x.dtype)
    for s in range(kernel_w):
        shifted[:, s] = x_chwn[:, :, s:s + ow]
    rows = shifted.reshape(c * kernel_w, padded_h * ow * n)
    row, span = ow * n, oh * ow * n
    # (C*S, span) @ (span, K): BLAS ran this faster than dy @ columns^T
    grads = numpy.empty((kernel_h, c * kernel_w, k), dtype=numpy.result_type(x, dy_chwn))
    for r in range(kernel_h):
        numpy.matmul(rows[:, r * row:r * row + span], dy_chwn.T, out=grads[r])
    return numpy.ascontiguousarray(grads.reshape(kernel_h, c, kernel_w, k).transpose(3, 1, 0, 2))


def image_columns(x, kernel, stride, pads, ones_row: bool = False):
    """Columns ``(N, C*R*S, OH*OW)``: column ``j`` of image ``n`` holds the window of
    output pixel ``j``, so one batched GEMM ``W (K, C*R*S) @ cols`` gives ``y`` as
    ``(N, K, OH*OW)``, already in NCHW order. ``ones_row`` appends a row of ones:
    a bias column beside ``W`` then adds the bias in the same GEMM.

    Built from a strided view of every window, copied once into this layout.
    """
    out_hw = tuple(output_size(n, f, s, p)
                   for n, f, s, p in zip(x.shape[2:], kernel, stride, pads))
    x_padded = numpy.ascontiguousarray(pad_input(x, pads))
    n, c = x.shape[:2]
    sn, sc, sh, sw = x_padded.strides
    shape = (n, c, kernel[0], kernel[1], out_hw[0], out_hw[1])
    window = c * kernel[0] * kernel[1]
    cols = numpy.empty((n, window + ones_row, out_hw[0] * out_hw[1]), dtype=x.dtype)
    _copy_windows(cols[:, :window].reshape(shape), x_padded, shape,
                  (sn, sc, sh, sw, sh * stride[0], sw * stride[1]))
    if ones_row:
        cols[:, window] = 1
    return cols, out_hw


def batch_columns(x, kernel, stride, pads):
    """Columns ``(C*R*S, OH*OW*N)`` with the batch innermost (CHWN): the backward's
    GEMMs against ``dy`` as ``(K, OH*OW*N)`` cover the whole batch, where
    :func:`image_columns`'s are one image wide. The input goes to ``(C, H, W, N)`` first,
    so the copy into columns moves runs of ``N`` (or ``OW*N``) values."""
    n, c, h, w = x.shape
    (pt, pb), (pl, pr) = pads
    oh, ow = (output_size(size, f, st, p) for size, f, st, p in zip(x.shape[2:], kernel, stride,
                                                                       pads))
    x_chwn = (numpy.zeros if pt or pb or pl or pr else numpy.empty)(
        (c, h + pt + pb, w + pl + pr, n), dtype=x.dtype)
    x_chwn[:, pt:pt + h, pl:pl + w] = x.transpose(1, 2, 3, 0)
    sc, sh, sw, sn = x_chwn.strides
    shape = (c, kernel[0], kernel[1], oh, ow, n)
    cols = numpy.empty((c * kernel[0] * kernel[1], oh * ow * n), dtype=x.dtype)
    _copy_windows(cols.reshape(shape), x_chwn, shape,
                  (sc, sh, sw, sh * stride[0], sw * stride[1], sn))
    return cols


def _copy_windows(target, base, shape, strides):
    """``target[...] =`` the contiguous array ``base`` seen with ``shape`` and byte
    ``strides`` (every window, overlapping). On NumPy the trailing axes that form
    one contiguous run in both go as single elements of a void dtype: NumPy's
    float copy pays per run, and with stride 1 a run is a window's row, a few
    dozen values (timings: bench/results/cpu-choices-2026-11.md)."""
    item = base.itemsize
    axes, run = len(shape), 1
    while (axes > 0 and strides[axes - 1] == run * item
           and target.strides[axes - 1] == run * item):
        run *= shape[axes - 1]
        axes -= 1
    if run == 1 or axes == 0:
        target[...] = numpy.lib.stride_tricks.as_strided(base, shape=shape, strides=strides)
        return
    row = numpy.dtype((numpy.void, run * item))
    runs = numpy.ndarray(shape[:axes], row, buffer=base, strides=strides[:axes])
    target.reshape(*shape[:axes], run).view(row)[..., 0] = runs


def input_gradient(weight, dy_chwn, x_shape, stride, pads, out_hw):
    """``dx``: the adjoint of :func:`image_columns` applied to the columns' gradient
    ``W^T dy``, every entry added back onto its input pixel. ``weight`` is
    ``(K, C, R, S)``, ``dy_chwn`` is ``(K, OH*OW*N)``, ``dx`` is ``x_shape``.

    The product (rows ``(r, s, c)``, columns ``(oh, ow, n)``) is formed one
    kernel row ``r`` at a time, ``S*C`` rows, and added back while it is still in
    cache, where whole it went to memory and back (LeNet-5's conv2: 3.8 MB per
    half batch). But each of those ``R`` GEMMs reads all of ``dy``, ``K`` rows, to
    save writing and reading ``S*C`` rows: with ``K >= 2*S*C`` the product is
    formed whole (AlexNet-CIFAR's conv1, 3 -> 64 channels). Each of the ``R*S``
    strided adds should move long runs of contiguous values, which matters in
    NumPy: with stride 1 an output row lands on ``OW*N`` contiguous values of a
    ``(C, H, W, N)`` buffer; with a larger stride the runs there shrink to ``N``,
    and an ``(H, W, C, N)`` buffer keeps runs of ``C*N``. Timings of each choice:
    bench/results/cpu-choices-2026-11.md.
    """
    n, c, h, w = x_shape
    k, _, kernel_h, kernel_w = weight.shape
    (pt, pb), (pl, pr) = pads
    oh, ow = out_hw
    padded_hw = (h + pt + pb, w + pl + pr)
    thin = k < 2 * kernel_w * c
    if thin and stride == (1, 1):
        return _input_gradient_in_row_frames(weight, dy_chwn, x_shape, pads, out_hw)
    kernel_rows = 1 if thin else kernel_h  # per GEMM
    # W^T's rows (r, s, c), kernel_rows kernel rows to a GEMM
    weight_rows = numpy.ascontiguousarray(weight.transpose(2, 3, 1, 0)).reshape(
        kernel_h // kernel_rows, kernel_rows * kernel_w * c, k)
    block = numpy.empty((kernel_rows * kernel_w * c, dy_chwn.shape[1]), dtype=dy_chwn.dtype)
    blocks = block.reshape(kernel_rows * kernel_w, c, oh, ow, n)
    runs_along_width = stride[1] == 1
    dx_padded = numpy.zeros((c, *padded_hw, n) if runs_along_width else (*padded_hw, c, n),
                         dtype=dy_chwn.dtype)
    for offset, rows, columns in window_offsets(weight.shape[2:], stride, out_hw):
        gemm, within = divmod(offset, len(blocks))
        if within == 0:
            numpy.matmul(weight_rows[gemm], dy_chwn, out=block)
        if runs_along_width:
            dx_padded[:, rows, columns] += blocks[within]
        else:
            dx_padded[rows, columns] += blocks[within].transpose(1, 2, 0, 3)
    if runs_along_width:
        return numpy.ascontiguousarray(dx_padded[:, pt:pt + h, pl:pl + w].transpose(3, 0, 1, 2))
    return numpy.ascontiguousarray(dx_padded[pt:pt + h, pl:pl + w].transpose(3, 2, 0, 1))




# _input_gradient_in_row_frames works through the output rows in blocks of at
# most this many bytes of shifted dy and products: whole, at batch 128 (5.7 +
# 2.2 MB at LeNet-5's conv2), they left the cache, and the gain over the
# kernel-row GEMMs fell from about 1.25x to 1.1x at best
# (bench/results/cpu-step-2026-12-06c.md).
ROW_FRAME_BLOCK_BYTES = 2**22


def _input_gradient_in_row_frames(weight, dy_chwn, x_shape, pads, out_hw):
    """:func:`input_gradient` for stride 1 and few filters (``K < 2*S*C``), where
    its GEMMs have only ``K`` terms (LeNet-5's conv2: 16) and it makes ``R*S``
    adds. Here ``dy`` is first copied ``S`` times, shifted by ``s`` columns
    inside rows as wide as the padded input (``OW + S - 1``, the gaps zero).
    One GEMM with ``K*S`` terms then sums over ``k`` and ``s`` at once, giving
    per kernel row ``r`` and channel one run of whole padded rows, so only ``R``
    adds remain, each over long contiguous runs. The frame's zero columns cost
    ``(S - 1) / OW`` more multiply-adds; at LeNet-5's conv2 this was faster
    (bench/results/cpu-step-2026-12-06c.md). Blocks of output rows keep the
    shifted copy and the products in cache (``ROW_FRAME_BLOCK_BYTES``).
    """
    n, c, h, w = x_shape
    k, _, kernel_h, kernel_w = weight.shape
    (pt, pb), (pl, pr) = pads
    oh, ow = out_hw
    padded_h, padded_w = h + pt + pb, w + pl + pr  # oh + R - 1, ow + S - 1 at stride 1
    row = padded_w * n  # one padded row of every image (CHWN)
    bytes_per_row = row * (k * kernel_w + kernel_h * c) * dy_chwn.itemsize
    rows_per_block = max(1, min(oh, ROW_FRAME_BLOCK_BYTES // max(1, bytes_per_row)))
    # rows (r, c), columns (k, s): matching the shifted copy's rows
    weight_rows = numpy.ascontiguousarray(weight.transpose(2, 1, 0, 3)).reshape(
        kernel_h * c, k * kernel_w)
    dy_rows = dy_chwn.reshape(k, oh, ow, n)
    dx_padded = numpy.zeros((c, padded_h, padded_w, n),
                            dtype=numpy.result_type(weight, dy_chwn))
    planes = dx_padded.reshape(c, padded_h * row)
    shifted_block = numpy.empty((k, kernel_w, rows_per_block, padded_w, n), dtype=dy_chwn.dtype)
    for top in range(0, oh, rows_per_block):
        rows = min(rows_per_block, oh - top)
        shifted = shifted_block[:, :, :rows]
        for s in range(kernel_w):
            shifted[:, s, :, :s] = 0
            shifted[:, s, :, s:s + ow] = dy_rows[:, top:top + rows]
            shifted[:, s, :, s + ow:] = 0
        span = rows * row
        products = (weight_rows @ shifted.reshape(k * kernel_w, span)).reshape(kernel_h, c, span)
        for r in range(kernel_h):
            planes[:, (top + r) * row:(top + r) * row + span] += products[r]
    return numpy.ascontiguousarray(dx_padded[:, pt:pt + h, pl:pl + w].transpose(3, 0, 1, 2))
