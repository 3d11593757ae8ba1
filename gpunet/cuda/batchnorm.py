"""Launchers for ``kernels/batchnorm.cu``: per-channel statistics, normalise and
affine, and the backward reductions and input gradient."""
from __future__ import annotations

import numpy

from ..backend import get_array_module
from . import runtime
from .runtime import BLOCK, ceil_div, new_output


def _sizes(x):
    n, c = x.shape[:2]
    return n, c, int(numpy.prod(x.shape[2:], dtype=numpy.int64))


def _elementwise_grid(count):
    return (ceil_div(count, BLOCK), 1, 1)


def stats(x):
    """``(mean, var)`` per channel (biased variance), each ``(C,)``."""
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    n, c, hw = _sizes(x)
    mean, var = new_output(xp, (c,), x.dtype), new_output(xp, (c,), x.dtype)
    runtime.launch("batchnorm", "bn_fwd_stats", x.dtype, (c, 1, 1), (BLOCK, 1, 1),
                   (x, mean, var, numpy.int32(n), numpy.int32(c), numpy.int64(hw)),
                   shared_mem=BLOCK * x.dtype.itemsize)
    return mean, var


def apply(x, mean, inv_std, weight, bias):
    """``(y, x_hat)``: ``x_hat = (x - mean) inv_std``, ``y = weight x_hat + bias``."""
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    n, c, hw = _sizes(x)
    y, x_hat = new_output(xp, x.shape, x.dtype), new_output(xp, x.shape, x.dtype)
    args = [xp.ascontiguousarray(a) for a in (mean, inv_std, weight, bias)]
    runtime.launch("batchnorm", "bn_fwd_apply", x.dtype, _elementwise_grid(x.size), (BLOCK, 1, 1),
                   (x, *args, y, x_hat, numpy.int64(x.size), numpy.int32(c), numpy.int64(hw)))
    return y, x_hat


def backward(dy, x_hat, weight, inv_std, training: bool):
    """``(dx, dweight, dbias)``."""
    xp = get_array_module(dy)
    dy = xp.ascontiguousarray(dy)
    n, c, hw = _sizes(dy)
    dbias, dweight = new_output(xp, (c,), dy.dtype), new_output(xp, (c,), dy.dtype)
    runtime.launch("batchnorm", "bn_bwd_reduce", dy.dtype, (c, 1, 1), (BLOCK, 1, 1),
                   (dy, x_hat, dbias, dweight, numpy.int32(n), numpy.int32(c), numpy.int64(hw)),
                   shared_mem=BLOCK * dy.dtype.itemsize)
    dx = new_output(xp, dy.shape, dy.dtype)
    runtime.launch("batchnorm", "bn_bwd_dx", dy.dtype, _elementwise_grid(dy.size), (BLOCK, 1, 1),
                   (dy, x_hat, xp.ascontiguousarray(weight), xp.ascontiguousarray(inv_std), dbias,
                    dweight, dx, numpy.int64(dy.size), numpy.int32(c), numpy.int64(hw),
                    numpy.int64(n * hw), numpy.int32(1 if training else 0)))
    return dx, dweight, dbias
