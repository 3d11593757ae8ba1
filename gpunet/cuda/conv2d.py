"""Launchers for ``kernels/conv2d.cu``: forward, backward-data, backward-weight
(split-K, reduced in a fixed order) and the bias gradient."""
from __future__ import annotations

import functools

import numpy

from .._context import Context
from ..backend import get_array_module
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
    __slots__ = ("x", "weight", "has_bias", "geometry", "sizes", "stride", "pads", "dilation",
                 "_spread")

    def __init__(self, x, weight, has_bias, geometry, sizes, stride=(1, 1), pads=((0, 0), (0, 0)),
                 dilation=(1, 1)):
        n, _, _, _, k, _, _, oh, ow = sizes
        super().__init__("conv2d", (n, k, oh, ow))
        self.x, self.weight, self.has_bias, self.geometry = x, weight, has_bias, geometry
        self.sizes = sizes  # (N, C, H, W, K, R, S, OH, OW)
        self.stride, self.pads, self.dilation = tuple(stride), pads, tuple(dilation)
        self._spread = None

    def spread(self):
        """``(weight, geometry, sizes)`` of the spread filter (:func:`dilate`); the
        real ones without dilation."""
        if self.dilation == (1, 1):
            return self.weight, self.geometry, self.sizes
        if self._spread is None:
            xp = get_array_module(self.weight)
            sizes = conv2d_plan.spread_sizes(self.sizes, self.dilation)
            self._spread = (dilate(xp, self.weight, self.dilation),
                            _geometry(sizes, self.stride, self.pads), sizes)
        return self._spread

    def _backward(self, dy, input_grad):
        return backward(dy, self, input_grad)


# ConvGeometry's fields (kernels/conv2d.cu), in its order
GEOMETRY_FIELDS = ("N", "C", "H", "W", "K", "R", "S", "OH", "OW", "sh", "sw", "pt", "pl",
                   "ow_magic", "ow_shift", "p_magic", "p_shift", "w_magic", "w_shift",
                   "hw_magic", "hw_shift", "s_magic", "s_shift", "rs_magic", "rs_shift",
                   "sh_magic", "sh_shift", "sw_magic", "sw_shift")


def _geometry(sizes, stride, pads):
    """The kernels' ConvGeometry argument (passed by value: runtime.geometry)."""
    return geometry(GEOMETRY_FIELDS,
                    _geometry_values(tuple(sizes), tuple(stride), tuple(pads)))


@functools.lru_cache(maxsize=conv2d_plan.PLAN_CACHE_SIZE)
def _geometry_values(sizes, stride, pads):
    """ConvGeometry's int32 values, computed once per shape (bounded cache)."""
    n, c, h, w, k, r, s, oh, ow = sizes
    values = (*sizes, stride[0], stride[1], pads[0][0], pads[1][0])
    # divisors in the order of ConvGeometry: OW, OH*OW, W, H*W, S, R*S, sh, sw
    return with_divisors(values, (ow, oh * ow, w, h * w, s, r * s, *stride))


@functools.lru_cache(maxsize=conv2d_plan.PLAN_CACHE_SIZE)
def _bias_runs(total, k):
    """The bias gradient's ``(parts, chunk)`` (runtime.runs), once per shape."""
    return runtime.runs(total, k, TARGET_BLOCKS, 1024)


# kernels/conv2d.cu's TAP_PADDING, TAP_OUTSIDE and WINDOW_EXTENT: a tap's place in its
# window is given one-hot, bit i for offset i < WINDOW_EXTENT, so that the kernels test
# a tap against a thread's window with two logic instructions (the bits of the rows and
# columns inside the input); each tap list runs on past its end with TAP_PADDING taps
# whose bits (TAP_OUTSIDE) no window holds, so that a kernel step reads TILE_K (8, or
# 16) taps with no bound on the index.
TAP_PADDING = 16
WINDOW_EXTENT = 31
TAP_OUTSIDE = -(1 << 31)  # bit 31, as an int32


def forward_taps(c, h, w, r, s, dilation=(1, 1)):
    """Per reduction index t = (c, r, s), with ``(i, j) = (r d_h, s d_w)`` the tap's
    place in the window: ``(c H W + i W + j, 1 << i, 1 << j, 0)``; then
    ``TAP_PADDING`` taps ``(0, TAP_OUTSIDE, TAP_OUTSIDE, 0)``."""
    cc, rr, ss = numpy.meshgrid(numpy.arange(c), numpy.arange(r), numpy.arange(s), indexing="ij")
    ii, jj = rr * dilation[0], ss * dilation[1]
    taps = numpy.stack([cc * h * w + ii * w + jj, 1 << ii, 1 << jj, numpy.zeros_like(cc)], -1)
    return numpy.concatenate([taps.reshape(-1, 4), _padding_taps()]).ravel()


def _padding_taps():
    """``TAP_PADDING`` taps ``(0, TAP_OUTSIDE, TAP_OUTSIDE, 0)``: past a list's end,
    outside any window."""
    return numpy.tile(numpy.array([0, TAP_OUTSIDE, TAP_OUTSIDE, 0], numpy.int64),
                      (TAP_PADDING, 1))


def data_phase_table(sizes, stride, pads, dilation, block_columns):
    """conv2d_bwd_data's table (kernels/conv2d.cu): per phase of dx (row phase major)
    three int4, ``{taps offset, taps count, first block, columns}``, ``{h0, w0, rows,
    cols}``, ``{oh_top0, ow_top0, weights offset, 0}``, then each phase's taps, (k, r,
    s) in order over the taps that reach it: ``{k OH OW - j OW - l, 1 << j, 1 << l, k C
    R S + r S + s}``, each phase's followed by ``TAP_PADDING`` taps ``{0, TAP_OUTSIDE,
    TAP_OUTSIDE, 0}``; then each phase's weight indices (the taps' last column, the
    padding's included) again as a list of int32 of its own, from ``weights offset``
    (in int32, a multiple of 8: the kernel reads four, or eight, as one aligned vector);
    ``block_columns``: the GEMM tile's columns."""
    n, c, h, w, k, r, s, oh, ow = sizes
    phases = conv2d_plan.data_gemm_phases(sizes, stride, pads, dilation)
    head, taps, block = [], [], 0
    offset = 3 * len(phases)
    for (h0, rows, oh0, r_reach), (w0, cols, ow0, s_reach) in phases:
        kk, (rr, jj), (ss, ll) = numpy.arange(k), _pairs(r_reach), _pairs(s_reach)
        kk, rr, ss = (a.reshape(shape) for a, shape in
                      ((kk, (-1, 1, 1)), (rr, (1, -1, 1)), (ss, (1, 1, -1))))
        jj, ll = jj.reshape(1, -1, 1), ll.reshape(1, 1, -1)
        phase_taps = numpy.broadcast_arrays(kk * oh * ow - jj * ow - ll, (1 << jj) + 0 * kk,
                                            (1 << ll) + 0 * kk, kk * c * r * s + rr * s + ss)
        count = phase_taps[0].size
        columns = n * rows * cols
        head += [[offset, count, block, columns], [h0, w0, rows, cols], [oh0, ow0, 0, 0]]
        taps += [numpy.stack([a.ravel() for a in phase_taps], -1),
                 _padding_taps()]
        offset += count + TAP_PADDING
        block += ceil_div(columns, block_columns)
    # each phase's weight indices start on a multiple of 8 int32: the kernel reads
    # A_PER of them (4, or 8 with TILE_K 16) as one vector aligned to its size
    gap = offset % 2
    offset += gap
    weights = [numpy.zeros(4 * gap, numpy.int64)]
    for p in range(len(phases)):
        head[3 * p + 2][2] = 4 * offset
        indices = numpy.concatenate(taps[2 * p:2 * p + 2])[:, 3]
        weights.append(numpy.concatenate([indices, numpy.zeros(-len(indices) % 8, numpy.int64)]))
        offset += len(weights[-1]) // 4
    return numpy.concatenate([numpy.array(head).ravel()]
                             + [a.ravel() for a in taps] + weights)


def _pairs(reach):
    """``(taps, j)`` of axis_phases' ``[(tap, j), ...]`` as two int arrays."""
    return (numpy.array([t for t, _ in reach], numpy.int64),
            numpy.array([j for _, j in reach], numpy.int64))


def _check_sizes(where, n, c, h, w, k, r, s, oh, ow):
    check_indexable(where, x=n * c * h * w, weight=k * c * r * s, y=n * k * oh * ow)
    runtime.check_grid_rows(where, "filters", k)  # the bias gradient's grid


def fits(x_shape, weight_shape, out_hw) -> bool:
    """Whether the kernels' 32-bit indices and grids cover this convolution, and its
    (dilated) filter, ``weight_shape[2:]``, the one-hot window offsets of the tap tables
    (at most WINDOW_EXTENT rows and columns)."""
    n, c, h, w = x_shape
    k, _, r, s = weight_shape
    # the weight gradient's partial sums hold a slice, and one of scratch where the
    # GEMM pads the channels
    weight_partial = (1 + conv2d_plan.weight_scratch(x_shape)) * k * c * r * s
    return indexable(n * c * h * w, weight_partial, n * k * out_hw[0] * out_hw[1]) and \
        k <= runtime.MAX_GRID_ROWS and max(r, s) <= WINDOW_EXTENT


def _zeros(xp, k, dtype):
    return table(xp, ("conv2d zero bias", k), lambda: numpy.zeros(k), dtype)


def dilate(xp, weight, dilation):
    """``(K, C, d_h (R - 1) + 1, d_w (S - 1) + 1)``: ``weight`` with ``d - 1`` zeros
    between its taps, the filter that reads what the dilated one reads."""
    k, c, r, s = weight.shape
    dh, dw = dilation
    spread = xp.zeros((k, c, dh * (r - 1) + 1, dw * (s - 1) + 1), weight.dtype)
    spread[:, :, ::dh, ::dw] = weight
    return spread


def forward(x, weight, bias, stride, pads, out_hw, dilation=(1, 1)):
    """``(y, ctx)``; arguments already validated by ``ops.conv2d_forward``. Dilated,
    the GEMMs of the forward and backward-data read taps ``dilation`` apart from
    their tap tables (:func:`forward_taps`, :func:`data_phase_table`); the direct kernels
    and the weight gradient, which compute their taps, run :func:`dilate`'s spread
    filter (the plans count its zero taps as issued, not useful, work)."""
    xp = get_array_module(x)
    dilation = tuple(dilation)
    x, weight = xp.ascontiguousarray(x), xp.ascontiguousarray(weight)
    # hashable, as the plan and geometry caches key on them
    stride, pads = tuple(stride), tuple(tuple(p) for p in pads)
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    oh, ow = out_hw
    sizes = (n, c, h, w, k, r, s, oh, ow)
    _check_sizes("conv2d", *sizes)
    extent = (dilation[0] * (r - 1) + 1, dilation[1] * (s - 1) + 1)
    if max(extent) > WINDOW_EXTENT:
        raise ValueError(f"conv2d: the weight's window (dilated) spans {extent[0]} x "
                         f"{extent[1]}; the CUDA kernels take at most {WINDOW_EXTENT} rows "
                         f"and columns (use_kernels=False takes the xp path)")
    # no geometry for an input of no rows or columns: its divisors would be 0
    geom = _geometry(sizes, stride, pads) if n * k * h * w else None
    if n * k == 0 or c * h * w == 0:
        # nothing to launch (a zero grid, or a GEMM with no reduction: the bias alone;
        # an input of height or width 0 is all padding)
        y = xp.zeros((n, k, oh, ow), x.dtype)
        if bias is not None:
            y += bias.reshape(k, 1, 1)
        return y, ConvContext(x, weight, bias is not None, geom, sizes, stride, pads, dilation)
    ctx = ConvContext(x, weight, bias is not None, geom, sizes, stride, pads, dilation)
    y = new_output(xp, (n, k, oh, ow), x.dtype)
    plan = conv2d_plan.forward_plan(sizes, stride, pads, x.dtype, _tf32(xp),
                                    runtime.sm_count(xp), dilation)
    bias_arg = _zeros(xp, k, x.dtype) if bias is None else xp.ascontiguousarray(bias)
    if plan.kernel == "conv2d_fwd_direct":
        spread_weight, spread_geom, _ = ctx.spread()
        runtime.launch("conv2d", plan.kernel, x.dtype, plan.grid, (plan.tile[1], 1, 1),
                       (x, spread_weight, bias_arg, y, spread_geom))
    else:
        taps = table(xp, ("conv2d forward taps", c, h, w, r, s, dilation),
                     lambda: forward_taps(c, h, w, r, s, dilation), numpy.int32)
        if plan.split == 1:
            runtime.launch("conv2d", plan.kernel, x.dtype, plan.grid, GEMM_BLOCK,
                           (x, weight, bias_arg, y, geom, taps))
        else:
            count = n * k * oh * ow
            partial = new_output(xp, (plan.split, count), x.dtype)
            runtime.launch("conv2d", plan.kernel, x.dtype, plan.grid, GEMM_BLOCK,
                           (x, weight, partial, geom, taps, numpy.int32(plan.chunk)))
            runtime.launch("conv2d", "conv2d_fwd_reduce", x.dtype, (ceil_div(count, BLOCK), 1, 1),
                           (BLOCK, 1, 1), (partial, bias_arg, y, numpy.int32(count),
                                           numpy.int32(plan.split), numpy.int32(oh * ow),
                                           numpy.int32(k)))
    return y, ctx


def _tf32(xp) -> bool:
    return runtime.allow_tf32() and runtime.tf32_supported(xp)


def _weight_grad(dy, ctx: ConvContext, tensor_cores: bool):
    """dweight by split-K: partial sums per slice of the (n, oh, ow) reduction, then
    summed in slice order."""
    xp = get_array_module(dy)
    weight, geom, sizes = ctx.spread()  # dilated: the spread filter's gradient
    n, c, h, w, k, r, s, oh, ow = sizes
    dtype = dy.dtype
    crs = c * r * s
    plan = conv2d_plan.weight_plan(ctx.sizes, ctx.stride, ctx.pads, dtype,
                                   tensor_cores and runtime.allow_tf32(), runtime.sm_count(xp),
                                   ctx.dilation)
    splits = plan.split
    direct = plan.kernel.endswith("_direct")
    # the GEMM's padded channels' sums land in a scratch slice past the split's
    scratch = 0 if direct else conv2d_plan.weight_scratch(sizes)
    partial = new_output(xp, (splits + scratch, k, crs), dtype)
    block = (plan.tile[1], 1, 1) if direct else GEMM_BLOCK
    if plan.kernel.endswith("_vec") and runtime.address(dy) % 16:
        dy = dy.copy()  # the _vec kernels read dy as 16-byte aligned vectors
    runtime.launch("conv2d", plan.kernel, dtype, plan.grid, block,
                   (dy, ctx.x, partial, geom, numpy.int32(plan.chunk)))
    dweight = new_output(xp, weight.shape, dtype)
    runtime.launch("conv2d", "conv2d_bwd_weight_reduce", dtype, (ceil_div(k * crs, BLOCK), 1, 1),
                   (BLOCK, 1, 1), (partial, dweight, numpy.int32(k * crs), numpy.int32(splits)))
    if ctx.dilation == (1, 1):
        return dweight
    return xp.ascontiguousarray(dweight[:, :, ::ctx.dilation[0], ::ctx.dilation[1]])


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
    if h * w == 0:  # all padding: only the bias saw dy (an xp sum: no geometry to launch)
        return (xp.zeros((n, c, h, w), dtype) if input_grad else None,
                xp.zeros(ctx.weight.shape, dtype),
                dy.sum(axis=(0, 2, 3)).astype(dtype) if ctx.has_bias else None)
    tensor_cores = runtime.tf32_supported(xp)

    dx = None
    if input_grad and c == 0:
        dx = xp.zeros((n, c, h, w), dtype)
    elif input_grad:
        dx = new_output(xp, (n, c, h, w), dtype)
        plan = conv2d_plan.data_plan(ctx.sizes, ctx.stride, ctx.pads, dtype,
                                     tensor_cores and runtime.allow_tf32(), runtime.sm_count(xp),
                                     ctx.dilation)
        # split (over k, or the phase's taps): slices laid out as dx, summed in order
        out = dx if plan.split == 1 else new_output(xp, (plan.split, n, c, h, w), dtype)
        if plan.kernel == "conv2d_bwd_data_direct":
            spread_weight, spread_geom, _ = ctx.spread()
            runtime.launch("conv2d", plan.kernel, dtype, plan.grid, (plan.tile[1], 1, 1),
                           (dy, spread_weight, out, spread_geom, numpy.int32(plan.chunk)))
        else:
            key = (ctx.sizes, ctx.stride, ctx.pads, ctx.dilation, plan.tile[1])
            phases = table(xp, ("conv2d data phases", key),
                           lambda: data_phase_table(*key), numpy.int32)
            runtime.launch("conv2d", plan.kernel, dtype, plan.grid, GEMM_BLOCK,
                           (dy, ctx.weight, out, ctx.geometry, phases, numpy.int32(plan.chunk)))
        if plan.split > 1:
            runtime.launch("conv2d", "conv2d_bwd_weight_reduce", dtype,
                           (ceil_div(dx.size, BLOCK), 1, 1), (BLOCK, 1, 1),
                           (out, dx, numpy.int32(dx.size), numpy.int32(plan.split)))

    total = n * oh * ow
    dweight = xp.zeros(ctx.weight.shape, dtype) if c == 0 else _weight_grad(dy, ctx, tensor_cores)

    dbias = None
    if ctx.has_bias:
        parts, chunk = _bias_runs(total, k)
        partial = new_output(xp, (parts, k), dtype)
        runtime.launch("conv2d", "conv2d_bwd_bias", dtype, (parts, k, 1), (BLOCK, 1, 1),
                       (dy, partial, ctx.geometry, numpy.int32(chunk)),
                       shared_mem=BLOCK * dtype.itemsize)
        dbias = new_output(xp, (k,), dtype)
        runtime.launch("conv2d", "conv2d_bwd_weight_reduce", dtype, (ceil_div(k, BLOCK), 1, 1),
                       (BLOCK, 1, 1), (partial, dbias, numpy.int32(k), numpy.int32(parts)))
    return dx, dweight, dbias
