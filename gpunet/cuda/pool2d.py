"""Launchers for ``kernels/pool2d.cu``: max pooling (saving argmax offsets) and
average pooling, forward and gather-style backward. ``pads`` may hold ceil mode's
overhang at the bottom and right (:func:`gpunet._context.pool_pads`): the kernels
need only the top and left padding and the output size; average pooling's divisors
come from :func:`~gpunet._context.avg_pool_bounds`."""
from __future__ import annotations

import functools

import numpy

from .._context import Context, avg_pool_bounds
from ..backend import get_array_module
from . import runtime
from .runtime import (
    BLOCK,
    Launch,
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


# PoolGeometry's fields (kernels/pool2d.cu), in its order
GEOMETRY_FIELDS = ("N", "C", "H", "W", "OH", "OW", "R", "S", "sh", "sw", "ph", "pw",
                   "ow_magic", "ow_shift", "oh_magic", "oh_shift", "w_magic", "w_shift",
                   "h_magic", "h_shift", "sh_magic", "sh_shift", "sw_magic", "sw_shift",
                   "h_lo", "h_hi", "w_lo", "w_hi")


def _pool_geometry(x_shape, kernel, stride, pads, out_hw, count_include_pad=True):
    """The kernels' PoolGeometry argument: one dict lookup for a shape seen before."""
    return _pool_geometry_of(tuple(x_shape), tuple(kernel), tuple(stride),
                             tuple(tuple(p) for p in pads), tuple(out_hw),
                             bool(count_include_pad))


@functools.lru_cache(maxsize=runtime.GEOMETRIES_KEPT)
def _pool_geometry_of(x_shape, kernel, stride, pads, out_hw, count_include_pad):
    n, c, h, w = x_shape
    values = (n, c, h, w, out_hw[0], out_hw[1], kernel[0], kernel[1], stride[0], stride[1],
              pads[0][0], pads[1][0])
    (h_lo, h_hi), (w_lo, w_hi) = avg_pool_bounds(x_shape, (pads[0][0], pads[1][0]),
                                                 count_include_pad)
    # divisors in the order of PoolGeometry: OW, OH, W, H, sh, sw; then the bounds
    return geometry(GEOMETRY_FIELDS,
                    with_divisors(values, (out_hw[1], out_hw[0], w, h, *stride))
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


KERNELS = {"max": ("max_pool2d_fwd", "max_pool2d_bwd"),
           "avg": ("avg_pool2d_fwd", "avg_pool2d_bwd")}


def _check_kind(kind):
    if kind not in KERNELS:
        raise ValueError(f"pool2d: kind must be 'max' or 'avg', got {kind!r}")


def forward_plan(kind: str, x_shape, out_hw) -> list[Launch]:
    """The launch of :func:`forward`: a thread per output; none for an empty output."""
    _check_kind(kind)
    outputs = int(numpy.prod(x_shape[:2], dtype=numpy.int64)) * out_hw[0] * out_hw[1]
    if outputs == 0:
        return []
    return [Launch(KERNELS[kind][0], (ceil_div(outputs, BLOCK), 1, 1), (BLOCK, 1, 1))]


def backward_plan(kind: str, x_shape) -> list[Launch]:
    """The launch of :func:`backward`: a thread per ``dx`` element (a gather, no
    atomics); none for an empty ``dx``."""
    _check_kind(kind)
    size = int(numpy.prod(x_shape, dtype=numpy.int64))
    if size == 0:
        return []
    return [Launch(KERNELS[kind][1], (ceil_div(size, BLOCK), 1, 1), (BLOCK, 1, 1))]


def forward(kind: str, x, kernel, stride, pads, out_hw, count_include_pad=True):
    """``(y, ctx)`` for ``kind`` ``"max"`` or ``"avg"``."""
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    out_shape = (*x.shape[:2], *out_hw)
    check_indexable(f"{kind}_pool2d", x=x.size, y=numpy.prod(out_shape, dtype=numpy.int64))
    geom = _pool_geometry(x.shape, kernel, stride, pads, out_hw, count_include_pad)
    y = new_output(xp, out_shape, x.dtype)
    if y.size == 0:  # no batch or no channels: nothing to launch (a zero grid)
        argmax = xp.zeros(out_shape, numpy.int32) if kind == "max" else None
        return y, PoolKernelContext(kind, tuple(x.shape), out_shape, geom, argmax, None)
    (plan,) = forward_plan(kind, x.shape, out_hw)
    pairs = numpy.int32(_pairs(x, kernel, stride, pads))
    if kind == "max":
        argmax, reciprocal = new_output(xp, out_shape, numpy.int32), None
        plan.run("pool2d", x.dtype, (x, y, argmax, geom, pairs))
    else:
        argmax, reciprocal = None, _reciprocals(xp, kernel, x.dtype)
        plan.run("pool2d", x.dtype, (x, y, geom, reciprocal, pairs))
    return y, PoolKernelContext(kind, tuple(x.shape), out_shape, geom, argmax, reciprocal)


def backward(dy, ctx: PoolKernelContext):
    xp = get_array_module(dy)
    dy = xp.ascontiguousarray(dy)
    dx = new_output(xp, ctx.x_shape, dy.dtype)
    if dx.size == 0:
        return dx
    (plan,) = backward_plan("max" if ctx.argmax is not None else "avg", ctx.x_shape)
    if ctx.argmax is not None:
        plan.run("pool2d", dy.dtype, (dy, ctx.argmax, dx, ctx.geometry))
    else:
        plan.run("pool2d", dy.dtype, (dy, dx, ctx.geometry, ctx.reciprocal))
    return dx
