"""Launchers for ``kernels/conv2d.cu``: forward, backward-data, backward-weight
(split-K, reduced in a fixed order) and the bias gradient."""
from __future__ import annotations

import numpy

from ..backend import get_array_module
from ..ops.common import Context
from . import conv2d_plan, runtime
from .conv2d_plan import TARGET_BLOCKS
from .runtime import (
    BLOCK,
    ceil_div,
    check_indexable,
    geometry,
    indexable,
    new_output,
    table,
    with_divisors,
)

GEMM_BLOCK = (256, 1, 1)


def tile(rows: int, dtype, tensor_cores: bool = True) -> tuple[str, int, int]:
    """conv2d_plan.tile with TF32 where allowed (runtime.allow_tf32) and the device
    has ``tensor_cores`` (runtime.tf32_supported)."""
    return conv2d_plan.tile(rows, dtype, tensor_cores and runtime.allow_tf32())


class ConvContext(Context):
    __slots__ = ("x", "weight", "has_bias", "geometry", "sizes", "stride", "pads")

    def __init__(self, x, weight, has_bias, geometry, sizes, stride=(1, 1), pads=((0, 0), (0, 0))):
        n, _, _, _, k, _, _, oh, ow = sizes
        super().__init__("conv2d", (n, k, oh, ow))
        self.x, self.weight, self.has_bias, self.geometry = x, weight, has_bias, geometry
        self.sizes = sizes  # (N, C, H, W, K, R, S, OH, OW)
        self.stride, self.pads = tuple(stride), pads

    def _backward(self, dy, input_grad):
        return backward(dy, self, input_grad)


def _geometry(xp, sizes, stride, pads):
    n, c, h, w, k, r, s, oh, ow = sizes
    values = (*sizes, stride[0], stride[1], pads[0][0], pads[1][0])
    # divisors in the order of ConvGeometry: OW, OH*OW, W, H*W, S, R*S, sh, sw
    return geometry(xp, with_divisors(values, (ow, oh * ow, w, h * w, s, r * s, *stride)))


def forward_taps(c, h, w, r, s):
    """Per reduction index t = (c, r, s): ``(c H W + r W + s, r, s, 0)``."""
    cc, rr, ss = numpy.meshgrid(numpy.arange(c), numpy.arange(r), numpy.arange(s), indexing="ij")
    return numpy.stack([cc * h * w + rr * w + ss, rr, ss, numpy.zeros_like(cc)], -1).ravel()


def data_taps(k, c, oh, ow, r, s):
    """Per reduction index t = (k, r, s): ``(k OH OW, r, s, k C R S + r S + s)``."""
    kk, rr, ss = numpy.meshgrid(numpy.arange(k), numpy.arange(r), numpy.arange(s), indexing="ij")
    return numpy.stack([kk * oh * ow, rr, ss, kk * c * r * s + rr * s + ss], -1).ravel()


def _check_sizes(where, n, c, h, w, k, r, s, oh, ow):
    check_indexable(where, x=n * c * h * w, weight=k * c * r * s, y=n * k * oh * ow)
    runtime.check_grid_rows(where, "filters", k)  # the bias gradient's grid


def fits(x_shape, weight_shape, out_hw) -> bool:
    """Whether the kernels' 32-bit indices and grids cover this convolution."""
    n, c, h, w = x_shape
    k, _, r, s = weight_shape
    return indexable(n * c * h * w, k * c * r * s, n * k * out_hw[0] * out_hw[1]) and \
        k <= runtime.MAX_GRID_ROWS


def _zeros(xp, k, dtype):
    return table(xp, ("conv2d zero bias", k), lambda: numpy.zeros(k), dtype)


class DilatedContext(Context):
    """A dilated convolution run as the undilated one of its zero-filled filter: the
    backward's dweight is that filter's gradient at the real taps."""

    __slots__ = ("inner", "dilation")

    def __init__(self, inner, dilation):
        super().__init__("conv2d", inner.out_shape)
        self.inner, self.dilation = inner, dilation

    def _backward(self, dy, input_grad):
        xp = get_array_module(dy)
        dx, dweight, dbias = self.inner.backward(dy, input_grad)
        dh, dw = self.dilation
        return dx, xp.ascontiguousarray(dweight[:, :, ::dh, ::dw]), dbias


def dilate(xp, weight, dilation):
    """``(K, C, d_h (R - 1) + 1, d_w (S - 1) + 1)``: ``weight`` with ``d - 1`` zeros
    between its taps, the filter that reads what the dilated one reads."""
    k, c, r, s = weight.shape
    dh, dw = dilation
    spread = xp.zeros((k, c, dh * (r - 1) + 1, dw * (s - 1) + 1), weight.dtype)
    spread[:, :, ::dh, ::dw] = weight
    return spread


def forward(x, weight, bias, stride, pads, out_hw, dilation=(1, 1)):
    """``(y, ctx)``; arguments already validated by ``ops.conv2d_forward``. A
    ``dilation`` above 1 runs the kernels on :func:`dilate`'s filter (the plans see
    its size: the zero taps are issued work, as the padding's are)."""
    xp = get_array_module(x)
    if tuple(dilation) != (1, 1):
        y, ctx = forward(x, dilate(xp, weight, dilation), bias, stride, pads, out_hw)
        return y, DilatedContext(ctx, tuple(dilation))
    x, weight = xp.ascontiguousarray(x), xp.ascontiguousarray(weight)
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    oh, ow = out_hw
    sizes = (n, c, h, w, k, r, s, oh, ow)
    _check_sizes("conv2d", *sizes)
    geom = _geometry(xp, sizes, stride, pads) if n * k else None
    if n * k == 0 or c == 0:
        # nothing to launch (a zero grid, or a GEMM with no reduction: the bias alone)
        y = xp.zeros((n, k, oh, ow), x.dtype)
        if bias is not None:
            y += bias.reshape(k, 1, 1)
        return y, ConvContext(x, weight, bias is not None, geom, sizes, stride, pads)
    y = new_output(xp, (n, k, oh, ow), x.dtype)
    plan = conv2d_plan.forward_plan(sizes, stride, pads, x.dtype, _tf32(xp),
                                    runtime.sm_count(xp))
    taps = None if plan.kernel.endswith("_direct") else \
        table(xp, ("conv2d forward taps", c, h, w, r, s), lambda: forward_taps(c, h, w, r, s),
              numpy.int32)
    bias_arg = _zeros(xp, k, x.dtype) if bias is None else xp.ascontiguousarray(bias)
    if plan.kernel == "conv2d_fwd_direct":
        runtime.launch("conv2d", plan.kernel, x.dtype, plan.grid, (plan.tile[1], 1, 1),
                       (x, weight, bias_arg, y, geom))
    else:
        runtime.launch("conv2d", plan.kernel, x.dtype, plan.grid, GEMM_BLOCK,
                       (x, weight, bias_arg, y, geom, taps))
    return y, ConvContext(x, weight, bias is not None, geom, sizes, stride, pads)


def _tf32(xp) -> bool:
    return runtime.allow_tf32() and runtime.tf32_supported(xp)


def _weight_grad(dy, ctx: ConvContext, tensor_cores: bool):
    """dweight by split-K: partial sums per slice of the (n, oh, ow) reduction, then
    summed in slice order."""
    xp = get_array_module(dy)
    n, c, h, w, k, r, s, oh, ow = ctx.sizes
    dtype = dy.dtype
    crs = c * r * s
    plan = conv2d_plan.weight_plan(ctx.sizes, ctx.stride, ctx.pads, dtype,
                                   tensor_cores and runtime.allow_tf32(), runtime.sm_count(xp))
    splits = plan.split
    partial = new_output(xp, (splits, k, crs), dtype)
    block = (plan.tile[1], 1, 1) if plan.kernel.endswith("_direct") else GEMM_BLOCK
    runtime.launch("conv2d", plan.kernel, dtype, plan.grid, block,
                   (dy, ctx.x, partial, ctx.geometry, numpy.int32(plan.chunk)))
    dweight = new_output(xp, ctx.weight.shape, dtype)
    runtime.launch("conv2d", "conv2d_bwd_weight_reduce", dtype, (ceil_div(k * crs, BLOCK), 1, 1),
                   (BLOCK, 1, 1), (partial, dweight, numpy.int32(k * crs), numpy.int32(splits)))
    return dweight


def backward(dy, ctx: ConvContext, input_grad: bool = True):
    """``(dx, dweight, dbias)``; ``dbias`` is ``None`` without a bias, ``dx`` with
    ``input_grad=False``."""
    xp = get_array_module(dy)
    dy = xp.ascontiguousarray(dy)
    n, c, h, w, k, r, s, oh, ow = ctx.sizes
    dtype = dy.dtype
    if n * k == 0:  # empty work: no launch (split_k and runs would divide by 0)
        return (xp.zeros((n, c, h, w), dtype) if input_grad else None,
                xp.zeros(ctx.weight.shape, dtype), xp.zeros(k, dtype) if ctx.has_bias else None)
    tensor_cores = runtime.tf32_supported(xp)

    dx = None
    if input_grad and c == 0:
        dx = xp.zeros((n, c, h, w), dtype)
    elif input_grad:
        dx = new_output(xp, (n, c, h, w), dtype)
        plan = conv2d_plan.data_plan(ctx.sizes, ctx.stride, ctx.pads, dtype,
                                     tensor_cores and runtime.allow_tf32(), runtime.sm_count(xp))
        if plan.kernel == "conv2d_bwd_data_direct":
            runtime.launch("conv2d", plan.kernel, dtype, plan.grid, (plan.tile[1], 1, 1),
                           (dy, ctx.weight, dx, ctx.geometry))
        else:
            taps = table(xp, ("conv2d data taps", k, c, oh, ow, r, s),
                         lambda: data_taps(k, c, oh, ow, r, s), numpy.int32)
            runtime.launch("conv2d", plan.kernel, dtype, plan.grid, GEMM_BLOCK,
                           (dy, ctx.weight, dx, ctx.geometry, taps))

    total = n * oh * ow
    dweight = xp.zeros(ctx.weight.shape, dtype) if c == 0 else _weight_grad(dy, ctx, tensor_cores)

    dbias = None
    if ctx.has_bias:
        parts, chunk = runtime.runs(total, k, TARGET_BLOCKS, 1024)
        partial = new_output(xp, (parts, k), dtype)
        runtime.launch("conv2d", "conv2d_bwd_bias", dtype, (parts, k, 1), (BLOCK, 1, 1),
                       (dy, partial, ctx.geometry, numpy.int32(chunk)),
                       shared_mem=BLOCK * dtype.itemsize)
        dbias = new_output(xp, (k,), dtype)
        runtime.launch("conv2d", "conv2d_bwd_weight_reduce", dtype, (ceil_div(k, BLOCK), 1, 1),
                       (BLOCK, 1, 1), (partial, dbias, numpy.int32(k), numpy.int32(parts)))
    return dx, dweight, dbias
