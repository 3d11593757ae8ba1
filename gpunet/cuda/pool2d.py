"""Launchers for ``kernels/pool2d.cu``: max pooling (saving argmax offsets) and
average pooling, forward and gather-style backward. ``pads`` may hold ceil mode's
overhang at the bottom and right (:func:`gpunet._context.pool_pads`): the kernels
need only the top and left padding and the output size; average pooling's divisors
come from :func:`~gpunet._context.avg_pool_bounds`."""
from __future__ import annotations

import numpy

from .._context import Context, avg_pool_bounds
from ..backend import get_array_module
from . import runtime
from .runtime import (
    BLOCK,
    address,
    ceil_div,
    check_indexable,
    geometry,
    indexable,
    new_output,
    with_divisors,
)


class PoolKernelContext(Context):
    __slots__ = ("x_shape", "geometry", "argmax", "reciprocal")

    def __init__(self, kind, x_shape, out_shape, geometry, argmax, reciprocal):
        super().__init__(f"{kind}_pool2d", out_shape)
        self.x_shape, self.geometry, self.reciprocal = x_shape, geometry, reciprocal
        self.argmax = argmax  # int32 offsets r*S + s (max pooling), None for average pooling

    def _backward(self, dy, input_grad):
        return (backward(dy, self),)


def _pool_geometry(xp, x_shape, kernel, stride, pads, out_hw, count_include_pad=True):
    n, c, h, w = x_shape
    values = (n, c, h, w, out_hw[0], out_hw[1], kernel[0], kernel[1], stride[0], stride[1],
              pads[0][0], pads[1][0])
    (h_lo, h_hi), (w_lo, w_hi) = avg_pool_bounds(x_shape, (pads[0][0], pads[1][0]),
                                                 count_include_pad)
    # divisors in the order of PoolGeometry: OW, OH, W, H, sh, sw; then the bounds
    return geometry(xp, with_divisors(values, (out_hw[1], out_hw[0], w, h, *stride))
                    + (h_lo, h_hi, w_lo, w_hi))


def fits(x_shape, out_hw) -> bool:
    """Whether the kernels' 32-bit indices cover this pooling."""
    return indexable(numpy.prod(x_shape, dtype=numpy.int64),
                     numpy.prod(x_shape[:2], dtype=numpy.int64) * out_hw[0] * out_hw[1])


def _pairs(x, kernel, stride, pads) -> int:
    """1 when each window row is two aligned neighbours (2-wide, stride 2, no left
    padding, W even): the forward kernels then read them as one vector."""
    return int(kernel[1] == 2 and stride[1] == 2 and pads[1][0] == 0 and x.shape[3] % 2 == 0
               and address(x) % (2 * x.dtype.itemsize) == 0)


def _reciprocals(xp, kernel, dtype):
    """``1/k`` for ``k = 0 .. R*S`` (0 unused), the average windows' divisors: the
    kernels multiply, as a GPU divides through an out-of-line slow-path routine."""
    area = kernel[0] * kernel[1]
    return runtime.table(xp, ("pool2d reciprocals", area),
                         lambda: 1.0 / numpy.maximum(numpy.arange(area + 1), 1), dtype)


def _grid(count):
    return (ceil_div(count, BLOCK), 1, 1), (BLOCK, 1, 1)


def forward(kind: str, x, kernel, stride, pads, out_hw, count_include_pad=True):
    """``(y, ctx)`` for ``kind`` ``"max"`` or ``"avg"``."""
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    out_shape = (*x.shape[:2], *out_hw)
    check_indexable(f"{kind}_pool2d", x=x.size, y=numpy.prod(out_shape, dtype=numpy.int64))
    geom = _pool_geometry(xp, x.shape, kernel, stride, pads, out_hw, count_include_pad)
    y = new_output(xp, out_shape, x.dtype)
    if y.size == 0:  # no batch or no channels: nothing to launch (a zero grid)
        argmax = xp.zeros(out_shape, numpy.int32) if kind == "max" else None
        return y, PoolKernelContext(kind, tuple(x.shape), out_shape, geom, argmax, None)
    grid, block = _grid(y.size)
    if kind == "max":
        argmax, reciprocal = new_output(xp, out_shape, numpy.int32), None
        runtime.launch("pool2d", "max_pool2d_fwd", x.dtype, grid, block,
                       (x, y, argmax, geom, numpy.int32(_pairs(x, kernel, stride, pads))))
    else:
        argmax, reciprocal = None, _reciprocals(xp, kernel, x.dtype)
        runtime.launch("pool2d", "avg_pool2d_fwd", x.dtype, grid, block,
                       (x, y, geom, reciprocal, numpy.int32(_pairs(x, kernel, stride, pads))))
    return y, PoolKernelContext(kind, tuple(x.shape), out_shape, geom, argmax, reciprocal)


def backward(dy, ctx: PoolKernelContext):
    xp = get_array_module(dy)
    dy = xp.ascontiguousarray(dy)
    dx = new_output(xp, ctx.x_shape, dy.dtype)
    if dx.size == 0:
        return dx
    grid, block = _grid(dx.size)
    if ctx.argmax is not None:
        runtime.launch("pool2d", "max_pool2d_bwd", dy.dtype, grid, block,
                       (dy, ctx.argmax, dx, ctx.geometry))
    else:
        runtime.launch("pool2d", "avg_pool2d_bwd", dy.dtype, grid, block,
                       (dy, dx, ctx.geometry, ctx.reciprocal))
    return dx
