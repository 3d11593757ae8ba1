"""The CPU accelerators of pooling: max pooling in two separable passes (rows,
then columns of the row maxima), which reads each input once per pass where the
textbook path (:mod:`gpunet.ops.pool2d`) copies every window; average pooling by
kernel offsets. Both over batch chunks on gpunet's threads (:mod:`.parallel`).
"""
from __future__ import annotations

import numpy

from .._context import Context, crop, pad_input, window_offsets
from . import parallel


def forward(kind: str, x, kernel, stride, pads, out_hw, divisor=None):
    """``(y, ctx)`` of ``"max"`` or ``"avg"`` pooling of the NumPy array ``x``
    (arguments checked by :mod:`gpunet.ops.pool2d`; ``pads`` hold ceil mode's
    overhang, ``divisor`` is the average windows' ``(OH, OW)`` divisors)."""
    if kind == "max":
        def pool(x_part):
            return _max_pool(x_part, kernel, stride, pads, out_hw)
    else:
        divisor = divisor.astype(x.dtype)

        def pool(x_part):
            return _avg_pool(x_part, kernel, stride, pads, out_hw, divisor)
    return parallel.forward_in_chunks(f"{kind}_pool2d", pool, x, x.size,
                                      (*x.shape[:2], *out_hw))


class MaxPoolContext(Context):
    """Each window's first maximum, as the offsets the two passes chose."""

    __slots__ = ("row_offset", "col_offset", "x_shape", "kernel", "stride", "pads")

    def __init__(self, row_offset, col_offset, x_shape, kernel, stride, pads):
        super().__init__("max_pool2d", row_offset.shape)
        self.row_offset, self.col_offset = row_offset, col_offset
        self.x_shape, self.kernel, self.stride, self.pads = x_shape, kernel, stride, pads

    def _backward(self, dy, input_grad):
        return (_max_pool_backward(dy, self),)


def _max_pool(x, kernel, stride, pads, out_hw):
    """The max is separable: first along each row (``R*S`` windows share their
    rows), then down the columns of those row maxima. Taking the first winner of
    each pass gives the first maximum in row-major order, as PyTorch and our kernel
    do."""
    x_padded = pad_input(x, pads, value=-numpy.inf)
    row_max, col_offset = _max_along(x_padded, 3, kernel[1], stride[1], out_hw[1])
    y, row_offset = _max_along(row_max, 2, kernel[0], stride[0], out_hw[0])
    return y, MaxPoolContext(row_offset, col_offset, tuple(x.shape), kernel, stride, pads)


def _max_pool_backward(dy, ctx):
    """``dx``: each window's gradient goes to its (first) maximum only.

    Disjoint windows (stride >= kernel) route ``dy`` back through the two passes,
    one strided write per kernel offset. Overlapping ones (3/2 pooling) can share
    a winner, and there that routing needs an add per offset with strided
    writes, slower than finding each winner's flat index and adding ``dy`` there
    in one scatter (``add.at``; bench/results/cpu-choices-2026-11.md).
    """
    row_offset, col_offset, x_shape = ctx.row_offset, ctx.col_offset, ctx.x_shape
    kernel, stride, pads = ctx.kernel, ctx.stride, ctx.pads
    (pt, pb), (pl, pr) = pads
    padded_shape = (*x_shape[:2], x_shape[2] + pt + pb, x_shape[3] + pl + pr)
    if stride[0] >= kernel[0] and stride[1] >= kernel[1]:
        d_row_max = _route_along(dy, row_offset, 2, kernel[0], stride[0], col_offset.shape)
        dx_padded = _route_along(d_row_max, col_offset, 3, kernel[1], stride[1], padded_shape)
    else:
        winners = _first_max_positions(row_offset, col_offset, padded_shape, kernel, stride)
        dx_padded = numpy.zeros(padded_shape, dtype=dy.dtype)
        numpy.add.at(dx_padded.reshape(-1), winners.reshape(-1), dy.reshape(-1))
    return crop(dx_padded, x_shape, pads)


def _first_max_positions(row_offset, col_offset, padded_shape, kernel, stride):
    """Index into the flattened padded input of each window's first maximum.

    The second pass picked a row (``row_offset``) of the first pass's row maxima,
    and that row's entry of ``col_offset`` holds the winning column: a select per
    kernel row, on bytes, gives the maximum's position ``r * S + s`` in its window,
    and a table turns that into an offset from the window's first pixel.
    """
    n, c, hp, wp = padded_shape
    oh, ow = row_offset.shape[2:]
    index_type = numpy.uint8 if kernel[0] * kernel[1] <= 256 else numpy.int32
    position = row_offset.astype(index_type) * index_type(kernel[1])
    for k in range(kernel[0]):
        position += _along(col_offset, 2, k, stride[0], oh) * (row_offset == k)
    within = numpy.arange(kernel[0] * kernel[1])
    within = within // kernel[1] * wp + within % kernel[1]
    index = within.take(position)
    index += (numpy.arange(n * c) * (hp * wp)).reshape(n, c, 1, 1)  # the plane's first pixel
    index += numpy.arange(oh)[:, None] * (stride[0] * wp) + numpy.arange(ow) * stride[1]  # window's
    return index


def _along(a, axis, start, stride, count):
    """``a`` at ``start, start + stride, ...`` (``count`` of them) on ``axis``: a view."""
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, start + stride * (count - 1) + 1, stride)
    return a[tuple(index)]


def _max_along(x, axis, kernel, stride, count):
    """Running max over the ``kernel`` offsets of ``count`` windows on ``axis``, and
    the offset of each window's first maximum (uint8 for any usual kernel)."""
    best = _along(x, axis, 0, stride, count).copy()
    index_type = numpy.uint8 if kernel <= 256 else numpy.int32
    offset = None
    for k in range(1, kernel):
        candidate = _along(x, axis, k, stride, count)
        # Strictly greater, so ties keep the first. Offsets rise with k, so
        # "becomes k where the candidate wins" is a max of integer arrays, which
        # is far cheaper in NumPy than a masked assignment.
        wins = (candidate > best).view(numpy.uint8).astype(index_type, copy=False)
        if offset is None:  # k = 1: the wins are the offsets (2x2 pooling: all of them)
            offset = wins
        else:
            numpy.maximum(offset, wins * index_type(k), out=offset)
        numpy.maximum(best, candidate, out=best)  # propagates NaN, as PyTorch does
    if offset is None:
        offset = numpy.zeros(best.shape, dtype=index_type)
    return best, offset


def _route_along(dy, offset, axis, kernel, stride, in_shape):
    """Adjoint of :func:`_max_along` for disjoint windows: each window's gradient
    to its winning offset."""
    count = dy.shape[axis]
    # Windows that tile the axis exactly write every input once: no zero fill.
    exact_cover = kernel == stride and in_shape[axis] == kernel * count
    dx = (numpy.empty if exact_cover else numpy.zeros)(in_shape, dtype=dy.dtype)
    for k in range(kernel):
        numpy.multiply(dy, offset == k, out=_along(dx, axis, k, stride, count))
    return dx


class AvgPoolContext(Context):
    __slots__ = ("x_shape", "kernel", "stride", "pads", "divisor")

    def __init__(self, x_shape, kernel, stride, pads, out_hw, divisor):
        super().__init__("avg_pool2d", (*x_shape[:2], *out_hw))
        self.x_shape, self.kernel, self.stride, self.pads = x_shape, kernel, stride, pads
        self.divisor = divisor

    def _backward(self, dy, input_grad):
        """``dx``: each window's gradient over its divisor, to each of its inputs."""
        (pt, pb), (pl, pr) = self.pads
        n, c, h, w = self.x_shape
        share = dy / self.divisor
        dx_padded = numpy.zeros((n, c, h + pt + pb, w + pl + pr), dtype=dy.dtype)
        for _, rows, cols in window_offsets(self.kernel, self.stride, dy.shape[2:]):
            dx_padded[:, :, rows, cols] += share
        return (crop(dx_padded, self.x_shape, self.pads),)


def _avg_pool(x, kernel, stride, pads, out_hw, divisor):
    x_padded = pad_input(x, pads)
    offsets = window_offsets(kernel, stride, out_hw)
    _, rows, cols = next(offsets)
    total = x_padded[:, :, rows, cols].copy()
    for _, rows, cols in offsets:
        total += x_padded[:, :, rows, cols]
    return total / divisor, AvgPoolContext(tuple(x.shape), kernel, stride, pads, out_hw,
                                           divisor)
