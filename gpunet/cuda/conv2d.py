"""Launchers for ``kernels/conv2d.cu``: forward, backward-data, backward-weight
(split-K, reduced in a fixed order) and the bias gradient."""
from __future__ import annotations

from typing import NamedTuple

import numpy

from ..backend import get_array_module
from . import runtime
from .runtime import BLOCK, NULL, ceil_div, geometry, new_output

TILE = 64              # output tile of one GEMM block (kernels/conv2d.cu TILE_M, TILE_N)
GEMM_BLOCK = (256, 1, 1)
TARGET_BLOCKS = 256    # split-K aims at about this many blocks, whatever the GPU: the
                       # split, hence the summation order, depends on the shapes only


class ConvContext(NamedTuple):
    x: object
    weight: object
    has_bias: bool
    geometry: object
    sizes: tuple  # (N, C, H, W, K, R, S, OH, OW)


def forward(x, weight, bias, stride, pads, out_hw):
    """``(y, ctx)``; arguments already validated by ``ops.conv2d_forward``."""
    xp = get_array_module(x)
    x, weight = xp.ascontiguousarray(x), xp.ascontiguousarray(weight)
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    oh, ow = out_hw
    sizes = (n, c, h, w, k, r, s, oh, ow)
    geom = geometry(xp, (*sizes, stride[0], stride[1], pads[0][0], pads[1][0]))
    y = new_output(xp, (n, k, oh, ow), x.dtype)
    grid = (ceil_div(n * oh * ow, TILE), ceil_div(k, TILE), 1)
    bias_arg = NULL if bias is None else xp.ascontiguousarray(bias)
    runtime.launch("conv2d", "conv2d_fwd", x.dtype, grid, GEMM_BLOCK,
                   (x, weight, bias_arg, y, geom))
    return y, ConvContext(x, weight, bias is not None, geom, sizes)


def split_k(total: int, tiles: int) -> tuple[int, int]:
    """``(splits, chunk)`` for a reduction of ``total`` terms over ``tiles`` output
    tiles: enough slices to fill the GPU, none shorter than 256 terms."""
    splits = max(1, min(ceil_div(TARGET_BLOCKS, tiles), ceil_div(total, 256)))
    chunk = ceil_div(ceil_div(total, splits), 16) * 16  # whole TILE_K steps
    return ceil_div(total, chunk), chunk


def backward(dy, ctx: ConvContext, input_grad: bool = True):
    """``(dx, dweight, dbias)``; ``dbias`` is ``None`` without a bias, ``dx`` with
    ``input_grad=False``."""
    xp = get_array_module(dy)
    dy = xp.ascontiguousarray(dy)
    n, c, h, w, k, r, s, oh, ow = ctx.sizes
    dtype = dy.dtype

    dx = None
    if input_grad:
        dx = new_output(xp, (n, c, h, w), dtype)
        grid = (ceil_div(n * h * w, TILE), ceil_div(c, TILE), 1)
        runtime.launch("conv2d", "conv2d_bwd_data", dtype, grid, GEMM_BLOCK,
                       (dy, ctx.weight, dx, ctx.geometry))

    crs, total = c * r * s, n * oh * ow
    splits, chunk = split_k(total, ceil_div(crs, TILE) * ceil_div(k, TILE))
    partial = new_output(xp, (splits, k, crs), dtype)
    grid = (ceil_div(crs, TILE), ceil_div(k, TILE), splits)
    runtime.launch("conv2d", "conv2d_bwd_weight", dtype, grid, GEMM_BLOCK,
                   (dy, ctx.x, partial, ctx.geometry, numpy.int64(chunk)))
    dweight = new_output(xp, ctx.weight.shape, dtype)
    runtime.launch("conv2d", "conv2d_bwd_weight_reduce", dtype, (ceil_div(k * crs, BLOCK), 1, 1),
                   (BLOCK, 1, 1), (partial, dweight, numpy.int64(k * crs), numpy.int32(splits)))

    dbias = None
    if ctx.has_bias:
        dbias = new_output(xp, (k,), dtype)
        runtime.launch("conv2d", "conv2d_bwd_bias", dtype, (k, 1, 1), (BLOCK, 1, 1),
                       (dy, dbias, ctx.geometry), shared_mem=BLOCK * dtype.itemsize)
    return dx, dweight, dbias
