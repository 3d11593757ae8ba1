"""Max and average pooling over ``(N, C, H, W)``.

Both directions loop over the kernel offsets (:func:`window_offsets`), each step
one strided slice of the padded input: no copy of every window is made, and
overlapping windows (e.g. 3/2) add their gradients up correctly.
"""
from __future__ import annotations

import numpy

from .. import _checks
from ..backend import common_array_module
from ..cuda import pool2d as cuda_pool2d
from .conv import _check_window, _kernels, output_size, pad_input, window_offsets


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
    Returns ``(y, ctx)``; ``ctx`` keeps each window's argmax offset."""
    kernel, stride, pads, out_hw = _geometry("max_pool2d", x, kernel_size, stride, padding)
    xp = common_array_module(x=x)
    if _kernels(xp, use_kernels):
        return cuda_pool2d.forward("max", x, kernel, stride, pads, out_hw)
    x_padded = pad_input(x, pads, value=-xp.inf)
    offsets = window_offsets(kernel, stride, out_hw)
    _, rows, cols = next(offsets)
    y = x_padded[:, :, rows, cols].copy()
    argmax = xp.zeros(y.shape, dtype=numpy.min_scalar_type(kernel[0] * kernel[1] - 1))
    for k, rows, cols in offsets:
        candidate = x_padded[:, :, rows, cols]
        # strictly greater: a tie keeps the first maximum, so one input gets the gradient
        xp.copyto(argmax, k, where=candidate > y)
        xp.maximum(y, candidate, out=y)  # propagates NaN, as PyTorch does
    return y, (argmax, x.shape, kernel, stride, pads, out_hw)


def max_pool2d_backward(dy, ctx):
    """``dx``: each window's gradient goes to its (first) maximum only."""
    if isinstance(ctx, cuda_pool2d.PoolContext):
        _check_dy("max_pool2d", dy, ctx.x_shape, ctx.out_shape[2:])
        return cuda_pool2d.backward(dy, ctx)
    argmax, x_shape, kernel, stride, pads, out_hw = ctx
    _check_dy("max_pool2d", dy, x_shape, out_hw)
    dx_padded = _zeros_padded(dy, x_shape, pads)
    for k, rows, cols in window_offsets(kernel, stride, out_hw):
        dx_padded[:, :, rows, cols] += dy * (argmax == k)
    return _crop(dx_padded, x_shape, pads)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, use_kernels=None):
    """``y = mean`` over each window; padded zeros count in the divisor
    (PyTorch's ``count_include_pad=True``). Returns ``(y, ctx)``."""
    kernel, stride, pads, out_hw = _geometry("avg_pool2d", x, kernel_size, stride, padding)
    if _kernels(common_array_module(x=x), use_kernels):
        return cuda_pool2d.forward("avg", x, kernel, stride, pads, out_hw)
    x_padded = pad_input(x, pads)
    offsets = window_offsets(kernel, stride, out_hw)
    _, rows, cols = next(offsets)
    total = x_padded[:, :, rows, cols].copy()
    for _, rows, cols in offsets:
        total += x_padded[:, :, rows, cols]
    return total / (kernel[0] * kernel[1]), (tuple(x.shape), kernel, stride, pads, out_hw)


def avg_pool2d_backward(dy, ctx):
    """``dx``: each window's gradient spread evenly over its ``R*S`` inputs."""
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
