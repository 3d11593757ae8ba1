"""Max and average pooling over ``(N, C, H, W)``, and adaptive average pooling.

The textbook path copies every window into columns (:func:`~.conv2d.im2col`,
padding ``-inf`` for max pooling, zeros for average) and reduces over the window:
max pooling keeps each window's argmax, the first maximum in row-major order as in
PyTorch, and its backward sends each window's gradient there; average pooling
spreads it evenly. Overlapping windows (3/2 pooling) add their gradients up in
:func:`~.conv2d.col2im`. NumPy arrays run :mod:`gpunet.cpu.pool2d`, CuPy arrays
gpunet's CUDA kernels (:mod:`gpunet.cuda.pool2d`, ``kernels/pool2d.cu``).
"""
from __future__ import annotations

from .. import _checks
from .._context import (
    Context,
    avg_pool_divisor,
    check_window,
    output_hw,
    pad_input,
    pool_pads,
)
from ..backend import common_array_module
from ..cpu import pool2d as cpu_pool2d
from ..cuda import pool2d as cuda_pool2d
from .common import cpu_scope, route
from .conv2d import col2im, im2col


def _checked_arguments(where, x, kernel_size, stride, padding, ceil_mode):
    """``(kernel, stride, padding, pads, out_hw)``: the arguments checked, and the
    windows' padding (ceil mode's overhang included) and output size."""
    _checks.float_array(where, "x", x)
    _checks.rank(where, "x", x, 4, "(N, C, H, W)")
    kernel = _checks.pair("kernel_size", kernel_size)
    stride = kernel if stride is None else _checks.pair("stride", stride)
    padding = _checks.pair("padding", padding, _checks.non_negative_int)
    ceil_mode = _checks.boolean("ceil_mode", ceil_mode)
    ph, pw = padding
    if ph > kernel[0] // 2 or pw > kernel[1] // 2:
        # Beyond half a window, some windows would hold padding only.
        raise ValueError(
            f"{where}: padding {(ph, pw)} must be at most half the kernel size {kernel}")
    check_window(where, x.shape, kernel, ((ph, ph), (pw, pw)))
    pads, out_hw = pool_pads(x.shape, kernel, stride, padding, ceil_mode)
    return kernel, stride, padding, pads, out_hw


def _pool2d_forward(kind, x, kernel_size, stride, padding, use_kernels, ceil_mode,
                    count_include_pad=True):
    """``pads`` are ``((top, bottom), (left, right))``, ceil mode's overhang included
    (:func:`gpunet._context.pool_pads`); average pooling divides each window by its own
    divisor (:func:`gpunet._context.avg_pool_divisor`), ``R*S`` but where ceil mode or
    ``count_include_pad=False`` cut the window."""
    kernel, stride, padding, pads, out_hw = _checked_arguments(
        f"{kind}_pool2d", x, kernel_size, stride, padding, ceil_mode)
    count_include_pad = _checks.boolean("count_include_pad", count_include_pad)
    xp = common_array_module(x=x)
    implementation = route(xp, use_kernels, cuda_pool2d.fits(x.shape, out_hw))
    if implementation == "cuda":
        return cuda_pool2d.forward(kind, x, kernel, stride, pads, out_hw, count_include_pad)
    divisor = None if kind == "max" else avg_pool_divisor(x.shape, kernel, stride, padding,
                                                          out_hw, count_include_pad)
    if implementation == "cpu":
        return cpu_pool2d.forward(kind, x, kernel, stride, pads, out_hw, divisor)
    value = -xp.inf if kind == "max" else 0.0
    cols = im2col(pad_input(x, pads, value), kernel, stride, ((0, 0), (0, 0)))
    windows = cols.reshape(*x.shape[:2], kernel[0] * kernel[1], *out_hw)
    if kind == "avg":
        divisor = xp.asarray(divisor, dtype=x.dtype)
        return (windows.sum(axis=2) / divisor,
                PoolContext(kind, x.shape, kernel, stride, pads, None, divisor))
    argmax = windows.argmax(axis=2)  # the first maximum; NaN counts as the maximum
    y = xp.take_along_axis(windows, argmax[:, :, None], axis=2)[:, :, 0]
    return y, PoolContext(kind, x.shape, kernel, stride, pads, argmax, None)


class PoolContext(Context):
    __slots__ = ("x_shape", "kernel", "stride", "pads", "argmax", "divisor")

    def __init__(self, kind, x_shape, kernel, stride, pads, argmax, divisor):
        super().__init__(f"{kind}_pool2d",
                         (*x_shape[:2], *output_hw(x_shape, kernel, stride, pads)))
        self.x_shape, self.kernel, self.stride, self.pads = tuple(x_shape), kernel, stride, pads
        self.argmax = argmax  # each window's winning offset r * S + s; None: average
        self.divisor = divisor  # (OH, OW) of average windows; None: max

    def _backward(self, dy, input_grad):
        xp = common_array_module(dy=dy)
        area = self.kernel[0] * self.kernel[1]
        if self.argmax is None:
            windows = xp.broadcast_to((dy / self.divisor)[:, :, None],
                                      (*dy.shape[:2], area, *dy.shape[2:]))
        else:
            windows = xp.zeros((*dy.shape[:2], area, *dy.shape[2:]), dtype=dy.dtype)
            xp.put_along_axis(windows, self.argmax[:, :, None], dy[:, :, None], axis=2)
        cols = windows.reshape(*dy.shape[:2], *self.kernel, *dy.shape[2:])
        return (xp.ascontiguousarray(col2im(cols, self.x_shape, self.stride, self.pads)),)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, use_kernels=None, *,
                       ceil_mode=False):
    """``y = max`` over each window (padding counts as -inf; NaN propagates).
    ``ceil_mode`` rounds the output size up as PyTorch does (a last window that
    would start in the right padding is dropped). Returns ``(y, ctx)``;
    ``ctx.backward(dy)`` gives ``(dx,)``, each window's gradient at its first maximum."""
    return _pool2d_forward("max", x, kernel_size, stride, padding, use_kernels, ceil_mode)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, use_kernels=None, *,
                       ceil_mode=False, count_include_pad=True):
    """``y = sum / divisor`` over each window. The divisor counts the window's
    padded zeros with ``count_include_pad=True`` (PyTorch's default), only its
    inputs with ``False``, and never the part of a ``ceil_mode`` window beyond the
    padding. Returns ``(y, ctx)``; ``ctx.backward(dy)`` gives ``(dx,)``."""
    return _pool2d_forward("avg", x, kernel_size, stride, padding, use_kernels, ceil_mode,
                           count_include_pad)


def adaptive_matrix(xp, size_in: int, size_out: int, dtype):
    """Row ``i`` averages inputs ``floor(i n/m) .. ceil((i+1) n/m) - 1`` (PyTorch's windows)."""
    m = xp.zeros((size_out, size_in), dtype=dtype)
    for i in range(size_out):
        start, stop = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
        m[i, start:stop] = 1.0 / (stop - start)
    return m


class AdaptiveContext(Context):
    __slots__ = ("rows", "cols")

    def __init__(self, rows, cols, out_shape):
        super().__init__("adaptive_avg_pool2d", out_shape)
        self.rows, self.cols = rows, cols

    def _backward(self, dy, input_grad):
        with cpu_scope(dy):
            return (self.rows.T @ dy @ self.cols,)


def adaptive_avg_pool2d_forward(x, output_size):
    """Average pooling to ``output_size``, whatever the input size: each output row
    averages a band of input rows and each column a band of columns, so ``y = A_h x
    A_w^T`` and ``dx = A_h^T dy A_w``. Returns ``(y, ctx)``."""
    where = "adaptive_avg_pool2d"
    _checks.float_array(where, "x", x)
    _checks.rank(where, "x", x, 4, "(N, C, H, W)")
    output_size = _checks.pair("output_size", output_size)
    xp = common_array_module(x=x)
    rows = adaptive_matrix(xp, x.shape[2], output_size[0], x.dtype)
    cols = adaptive_matrix(xp, x.shape[3], output_size[1], x.dtype)
    with cpu_scope(x):  # N*C tiny GEMMs each way
        y = rows @ x @ cols.T
    return y, AdaptiveContext(rows, cols, y.shape)

