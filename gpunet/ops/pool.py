"""Max and average pooling over ``(N, C, H, W)``, windows via a strided view.

Both backward passes hand their per-window gradients to :func:`col2im`, the
adjoint of the window view, so overlapping windows (e.g. 3/2) add up correctly.
"""
from __future__ import annotations

from .. import _checks
from ..backend import common_array_module
from .conv import _check_window, col2im, output_size, pad_input, windows


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

def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """``y = max`` over each window (padding counts as -inf). Returns ``(y, ctx)``."""
    kernel, stride, pads, out_hw = _geometry("max_pool2d", x, kernel_size, stride, padding)
    xp = common_array_module(x=x)
    x_padded = xp.ascontiguousarray(pad_input(x, pads, value=-xp.inf))
    n, c = x.shape[:2]
    flat = windows(x_padded, kernel, stride, out_hw).reshape(
        n, c, kernel[0] * kernel[1], *out_hw)
    # argmax returns the first maximum, so ties send the gradient to one input.
    argmax = flat.argmax(axis=2)
    y = xp.take_along_axis(flat, argmax[:, :, None], axis=2)[:, :, 0]
    return y, (argmax, x.shape, kernel, stride, pads, out_hw)

def max_pool2d_backward(dy, ctx):
    """``dx``: each window's gradient goes to its (first) maximum only."""
    argmax, x_shape, kernel, stride, pads, out_hw = ctx
    xp = common_array_module(dy=dy)
    _check_dy("max_pool2d", dy, x_shape, out_hw)
    offsets = xp.arange(kernel[0] * kernel[1]).reshape(1, 1, -1, 1, 1)
    cols = (argmax[:, :, None] == offsets) * dy[:, :, None]
    return col2im(cols, x_shape, kernel, stride, pads, out_hw)

def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """``y = mean`` over each window; padded zeros count in the divisor
    (PyTorch's ``count_include_pad=True``). Returns ``(y, ctx)``."""
    kernel, stride, pads, out_hw = _geometry("avg_pool2d", x, kernel_size, stride, padding)
    xp = common_array_module(x=x)
    x_padded = xp.ascontiguousarray(pad_input(x, pads))
    y = windows(x_padded, kernel, stride, out_hw).mean(axis=(2, 3))
    return y, (tuple(x.shape), kernel, stride, pads, out_hw)

def avg_pool2d_backward(dy, ctx):
    """``dx``: each window's gradient spread evenly over its ``R*S`` inputs."""
    x_shape, kernel, stride, pads, out_hw = ctx
    xp = common_array_module(dy=dy)
    _check_dy("avg_pool2d", dy, x_shape, out_hw)
    share = dy / (kernel[0] * kernel[1])
    cols = xp.broadcast_to(share[:, :, None, None], (*dy.shape[:2], *kernel, *out_hw))
    return col2im(cols, x_shape, kernel, stride, pads, out_hw)

def _check_dy(where, dy, x_shape, out_hw):
    expected = (*x_shape[:2], *out_hw)
    if tuple(dy.shape) != expected:
        raise ValueError(f"{where} backward: dy must have shape {expected}, "
                         f"got {tuple(dy.shape)}")
