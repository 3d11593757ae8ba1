"""Max and average pooling over ``(N, C, H, W)``.

Both directions loop over kernel offsets, each step one strided slice of the padded
input: no copy of every window is made, and overlapping windows (e.g. 3/2) add
their gradients up correctly. Max pooling does rows and columns in two separable
passes; average pooling loops over all R*S offsets (:func:`window_offsets`).
"""
from __future__ import annotations

from .. import _checks, parallel
from ..backend import common_array_module
from ..cuda import pool2d as cuda_pool2d
from .conv2d import _check_window, _kernels, output_size, pad_input, window_offsets


def _geometry(where, x, kernel_size, stride, padding):
    _checks.float_array(where, "x", x)
    _checks.rank(where, "x", x, 4, "(N, C, H, W)")
    kernel = _checks.pair("kernel_size", kernel_size)
    stride = kernel if stride is None else _checks.pair("stride", stride)
    ph, pw = _checks.pair("padding", padding, _checks.non_negative_int)
    if ph > kernel[0] // 2 or pw > kernel[1] // 2:
        # Beyond half a window, some windows would hold padding only.
        raise ValueError(
            f"{where}: padding {(ph, pw)} must be at most half the kernel size {kernel}")
    pads = ((ph, ph), (pw, pw))
    _check_window(where, x.shape, kernel, pads)
    out_hw = tuple(output_size(n, f, s, p)
                   for n, f, s, p in zip(x.shape[2:], kernel, stride, pads))
    return kernel, stride, pads, out_hw

def max_pool2d_forward(x, kernel_size, stride=None, padding=0, use_kernels=None):
    """``y = max`` over each window (padding counts as -inf; NaN propagates).
    Returns ``(y, ctx)``; ``ctx`` keeps each window's argmax as two small offsets.

    The max is separable: first along each row (``R*S`` windows share their rows),
    then down the columns of those row maxima. Taking the first winner of each
    pass gives the first maximum in row-major order, as PyTorch and our kernel do.
    """
    kernel, stride, pads, out_hw = _geometry("max_pool2d", x, kernel_size, stride, padding)
    xp = common_array_module(x=x)
    if _kernels(xp, use_kernels, cuda_pool2d.fits(x.shape, out_hw)):
        return cuda_pool2d.forward("max", x, kernel, stride, pads, out_hw)
    return _on_cpu_threads(_max_pool, x, kernel, stride, pads, out_hw)


def _on_cpu_threads(pool, x, kernel, stride, pads, out_hw):
    """``pool(x, kernel, stride, pads, out_hw)``, on batch chunks for NumPy."""
    if common_array_module(x=x).__name__ == "numpy":
        return parallel.forward_in_chunks(lambda x_part: pool(x_part, kernel, stride, pads,
                                                              out_hw),
                                          x, x.size, (*x.shape[:2], *out_hw))
    return pool(x, kernel, stride, pads, out_hw)


def _max_pool(x, kernel, stride, pads, out_hw):
    xp = common_array_module(x=x)
    x_padded = pad_input(x, pads, value=-xp.inf)
    row_max, col_offset = _max_along(x_padded, 3, kernel[1], stride[1], out_hw[1])
    y, row_offset = _max_along(row_max, 2, kernel[0], stride[0], out_hw[0])
    return y, (row_offset, col_offset, tuple(x.shape), kernel, stride, pads, out_hw)


def max_pool2d_backward(dy, ctx):
    """``dx``: each window's gradient goes to its (first) maximum only.

    Disjoint windows (stride >= kernel) route ``dy`` back through the two passes,
    one strided write per kernel offset. Overlapping ones (3/2 pooling) can share
    a winner, and there that routing needs an add per offset with strided
    writes, 2-4x slower than finding each winner's flat index and adding ``dy``
    there in one scatter (``add.at``). On CuPy (``GPUNET_KERNELS=0`` only) those
    adds are atomic, so the last bit of a shared winner's sum may vary.
    """
    if isinstance(ctx, parallel.Chunked):
        return parallel.backward_in_chunks("max_pool2d", max_pool2d_backward, dy, ctx)
    if isinstance(ctx, cuda_pool2d.PoolContext):
        _check_dy("max_pool2d", dy, ctx.x_shape, ctx.out_shape[2:])
        return cuda_pool2d.backward(dy, ctx)
    row_offset, col_offset, x_shape, kernel, stride, pads, out_hw = ctx
    _check_dy("max_pool2d", dy, x_shape, out_hw)
    xp = common_array_module(dy=dy)
    (pt, pb), (pl, pr) = pads
    padded_shape = (*x_shape[:2], x_shape[2] + pt + pb, x_shape[3] + pl + pr)
    if stride[0] >= kernel[0] and stride[1] >= kernel[1]:
        d_row_max = _route_along(dy, row_offset, 2, kernel[0], stride[0], col_offset.shape)
        dx_padded = _route_along(d_row_max, col_offset, 3, kernel[1], stride[1], padded_shape)
    else:
        winners = _first_max_positions(xp, row_offset, col_offset, padded_shape, kernel,
                                       stride)
        dx_padded = xp.zeros(padded_shape, dtype=dy.dtype)
        xp.add.at(dx_padded.reshape(-1), winners.reshape(-1), dy.reshape(-1))
    return _crop(dx_padded, x_shape, pads)


def _first_max_positions(xp, row_offset, col_offset, padded_shape, kernel, stride):
    """Index into the flattened padded input of each window's first maximum.

    The second pass picked a row (``row_offset``) of the first pass's row maxima,
    and that row's entry of ``col_offset`` holds the winning column: a select per
    kernel row, on bytes, gives the maximum's position ``r * S + s`` in its window,
    and a table turns that into an offset from the window's first pixel.
    """
    n, c, hp, wp = padded_shape
    oh, ow = row_offset.shape[2:]
    index_type = xp.uint8 if kernel[0] * kernel[1] <= 256 else xp.int32
    position = row_offset.astype(index_type) * index_type(kernel[1])
    for k in range(kernel[0]):
        position += _along(col_offset, 2, k, stride[0], oh) * (row_offset == k)
    within = xp.arange(kernel[0] * kernel[1])
    within = within // kernel[1] * wp + within % kernel[1]
    index = within.take(position)
    index += (xp.arange(n * c) * (hp * wp)).reshape(n, c, 1, 1)  # the plane's first pixel
    index += xp.arange(oh)[:, None] * (stride[0] * wp) + xp.arange(ow) * stride[1]  # window's
    return index


def _along(a, axis, start, stride, count):
    """``a`` at ``start, start + stride, ...`` (``count`` of them) on ``axis``: a view."""
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, start + stride * (count - 1) + 1, stride)
    return a[tuple(index)]


def _max_along(x, axis, kernel, stride, count):
    """Running max over the ``kernel`` offsets of ``count`` windows on ``axis``, and
    the offset of each window's first maximum (uint8 for any usual kernel)."""
    xp = common_array_module(x=x)
    best = _along(x, axis, 0, stride, count).copy()
    index_type = xp.uint8 if kernel <= 256 else xp.int32
    offset = None
    for k in range(1, kernel):
        candidate = _along(x, axis, k, stride, count)
        # Strictly greater, so ties keep the first. Offsets rise with k, so
        # "becomes k where the candidate wins" is a max of integer arrays, which
        # is far cheaper in NumPy than a masked assignment.
        wins = (candidate > best).view(xp.uint8).astype(index_type, copy=False)
        if offset is None:  # k = 1: the wins are the offsets (2x2 pooling: all of them)
            offset = wins
        else:
            xp.maximum(offset, wins * index_type(k), out=offset)
        xp.maximum(best, candidate, out=best)  # propagates NaN, as PyTorch does
    if offset is None:
        offset = xp.zeros(best.shape, dtype=index_type)
    return best, offset


def _route_along(dy, offset, axis, kernel, stride, in_shape):
    """Adjoint of :func:`_max_along` for disjoint windows: each window's gradient
    to its winning offset."""
    xp = common_array_module(dy=dy)
    count = dy.shape[axis]
    # Windows that tile the axis exactly write every input once: no zero fill.
    exact_cover = kernel == stride and in_shape[axis] == kernel * count
    dx = (xp.empty if exact_cover else xp.zeros)(in_shape, dtype=dy.dtype)
    for k in range(kernel):
        xp.multiply(dy, offset == k, out=_along(dx, axis, k, stride, count))
    return dx


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, use_kernels=None):
    """``y = mean`` over each window; padded zeros count in the divisor
    (PyTorch's ``count_include_pad=True``). Returns ``(y, ctx)``."""
    kernel, stride, pads, out_hw = _geometry("avg_pool2d", x, kernel_size, stride, padding)
    if _kernels(common_array_module(x=x), use_kernels, cuda_pool2d.fits(x.shape, out_hw)):
        return cuda_pool2d.forward("avg", x, kernel, stride, pads, out_hw)
    return _on_cpu_threads(_avg_pool, x, kernel, stride, pads, out_hw)


def _avg_pool(x, kernel, stride, pads, out_hw):
    x_padded = pad_input(x, pads)
    offsets = window_offsets(kernel, stride, out_hw)
    _, rows, cols = next(offsets)
    total = x_padded[:, :, rows, cols].copy()
    for _, rows, cols in offsets:
        total += x_padded[:, :, rows, cols]
    return total / (kernel[0] * kernel[1]), (tuple(x.shape), kernel, stride, pads, out_hw)


def avg_pool2d_backward(dy, ctx):
    """``dx``: each window's gradient spread evenly over its ``R*S`` inputs."""
    if isinstance(ctx, parallel.Chunked):
        return parallel.backward_in_chunks("avg_pool2d", avg_pool2d_backward, dy, ctx)
    if isinstance(ctx, cuda_pool2d.PoolContext):
        _check_dy("avg_pool2d", dy, ctx.x_shape, ctx.out_shape[2:])
        return cuda_pool2d.backward(dy, ctx)
    x_shape, kernel, stride, pads, out_hw = ctx
    _check_dy("avg_pool2d", dy, x_shape, out_hw)
    share = dy / (kernel[0] * kernel[1])
    dx_padded = _zeros_padded(dy, x_shape, pads)
    for _, rows, cols in window_offsets(kernel, stride, out_hw):
        dx_padded[:, :, rows, cols] += share
    return _crop(dx_padded, x_shape, pads)


def _zeros_padded(dy, x_shape, pads):
    xp = common_array_module(dy=dy)
    (pt, pb), (pl, pr) = pads
    n, c, h, w = x_shape
    return xp.zeros((n, c, h + pt + pb, w + pl + pr), dtype=dy.dtype)


def _crop(dx_padded, x_shape, pads):
    (pt, _), (pl, _) = pads
    return dx_padded[:, :, pt:pt + x_shape[2], pl:pl + x_shape[3]]


def _check_dy(where, dy, x_shape, out_hw):
    expected = (*x_shape[:2], *out_hw)
    if tuple(dy.shape) != expected:
        raise ValueError(f"{where} backward: dy must have shape {expected}, "
                         f"got {tuple(dy.shape)}")
