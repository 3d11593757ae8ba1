"""What each conv2d launch issues, from the shape and the device's SM count alone.

A :class:`Plan` is one launch of kernels/conv2d.cu: the kernel, its tile, its grid,
the blocks an SM holds (the kernel's ``__launch_bounds__`` minimum), the waves that
grid makes on ``sms`` SMs, and the multiply-adds it issues against the useful ones
(the forward's ``N K OH OW C R S`` less the taps that land in the padding, for
every pass: zero taps, padded tile rows and columns and a reduction rounded up to
whole steps are issued, not useful). The launchers in gpunet/cuda/conv2d.py
launch what these functions plan; ``bench/gpu_plan.py`` prints them for the
benchmark cases without a GPU.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy

TILE_K = 8  # kernels/conv2d.cu's reduction step (its default -DTILE_K)
# Plans are cached per (shape, dtype, TF32, SM count): a repeated launch of a shape
# looks its plan up. Bounded, so that a stream of new shapes cannot grow it forever.
PLAN_CACHE_SIZE = 1024


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One launch: ``kernel`` over ``grid`` blocks of a ``tile`` (rows x columns of
    the GEMM's C a block computes), ``issued`` multiply-adds of which ``useful``
    are needed; ``split`` slices of the reduction, ``chunk`` terms each."""
    kernel: str
    tile: tuple[int, int]
    grid: tuple[int, int, int]
    blocks_per_sm: int
    sms: int
    issued: int
    useful: int
    split: int = 1
    chunk: int = 0
    most_blocks: int = 0  # the most blocks the pass could take (split-K at MIN_SLICE)

    @property
    def a_wave_of_work(self) -> bool:
        """Whether the pass has work for at least one wave of blocks: its blocks, or
        as many as slices of MIN_SLICE terms would make."""
        return max(self.blocks, self.most_blocks) >= self.sms * self.blocks_per_sm

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def waves(self) -> float:
        """Blocks over what the GPU holds at once."""
        return self.blocks / (self.sms * self.blocks_per_sm)

    @property
    def wave_fill(self) -> float:
        """The share of the launched waves' block slots in use (1: whole waves)."""
        return self.waves / math.ceil(self.waves)

    @property
    def overwork(self) -> float:
        """Issued over useful multiply-adds (1: nothing wasted)."""
        return self.issued / max(1, self.useful)


def _inside(size: int, out: int, taps: int, stride: int, pad: int, dilation: int = 1) -> int:
    """The (output, tap) pairs of one axis whose input o stride - pad + t dilation is
    inside."""
    return sum(max(0, min(out, (size - 1 + pad - t * dilation) // stride + 1)
                   - max(0, ceil_div(pad - t * dilation, stride))) for t in range(taps))


def useful_macs(sizes, stride=(1, 1), pads=((0, 0), (0, 0)), dilation=(1, 1)) -> int:
    """``N K C`` times the (output, tap) pairs of each axis that read inside x: the
    multiply-adds of every pass that are not a zero of the padding (nor, dilated, a
    zero between the taps of the spread filter a direct kernel runs)."""
    n, c, h, w, k, r, s, oh, ow = sizes
    return n * k * c * _inside(h, oh, r, stride[0], pads[0][0], dilation[0]) * \
        _inside(w, ow, s, stride[1], pads[1][0], dilation[1])


def spread_sizes(sizes, dilation):
    """``sizes`` with the kernel of the dilated filter spread out, zeros between its
    taps (``d (R - 1) + 1``): what the kernels without a tap table run."""
    n, c, h, w, k, r, s, oh, ow = sizes
    return (n, c, h, w, k, dilation[0] * (r - 1) + 1, dilation[1] * (s - 1) + 1, oh, ow)


def gemm_blocks_per_sm(kernel: str, dtype) -> int:
    """The second argument of the kernel's ``__launch_bounds__`` (GEMM_MIN_BLOCKS:
    two in float, one in double; one for the float 128 x 128 backward kernels)."""
    if numpy.dtype(dtype).itemsize == 8 or kernel in ("conv2d_bwd_data", "conv2d_bwd_weight",
                                                       "conv2d_bwd_weight_vec",
                                                       "conv2d_fwd_split"):
        return 1
    return 2


INDEX_LIMIT = 2**31
TARGET_BLOCKS = 256  # the bias gradient's runs aim at about this many blocks


def tile(rows: int, dtype, tf32: bool) -> tuple[str, int, int]:
    """``(kernel suffix, rows, columns)`` of the GEMM tile for a GEMM of ``rows`` rows
    (kernels/conv2d.cu): 128 x 128, or the wide 64 x 256 (64 x 128 in float64) when
    at most 64 rows would use it; float32 with ``tf32`` (allowed and supported): the
    tensor-core kernels (128 x 128)."""
    if tf32 and numpy.dtype(dtype) == numpy.float32:
        return "_tf32", 128, 128
    if rows > 64:
        return "", 128, 128
    return "_wide", 64, 256 if numpy.dtype(dtype).itemsize == 4 else 128


def _gemm(kernel, dtype, rows, cols, steps_per_block, grid, sms, useful, split=1, chunk=0):
    blocks = grid[0] * grid[1] * grid[2]
    return Plan(kernel, (rows, cols), grid, gemm_blocks_per_sm(kernel, dtype), sms,
                blocks * rows * cols * steps_per_block * TILE_K, useful, split, chunk)


DIRECT_MAX_C = 16     # backward data with at most this many channels: the direct kernel
DIRECT_THREADS = 256  # the direct kernels' block (kernels/conv2d.cu)
DIRECT_BLOCKS_PER_SM = 4  # their __launch_bounds__ minimum
MIN_SLICE = 256   # split-K: no slice of the reduction shorter than this many terms
# ... in the direct weight kernel, whose thread sums one product a term: a slice of
# 128 terms still runs a loop 128 long, and a filter of 150 taps (LeNet's conv1)
# needs short slices to fill the SMs
DIRECT_MIN_SLICE = 128
DIRECT_MIN_FILTERS = 2  # the direct data kernel's split: no slice of fewer filters
MAX_WAVES = 4     # split-K: no more slices than fill this many waves
GOOD_FILL = 0.75  # the wave fill issue 26 asks of a pass with a wave of work


def fill_score(waves: float) -> float:
    """How full the launched waves are, a grid under one wave counted by its share of
    one (split_k's measure)."""
    return waves / math.ceil(waves) if waves >= 1 else waves


def _row_gemm(kernel, dtype, rows, cols, grid, total, sms, useful) -> Plan:
    """The forward or backward-data GEMM over ``grid`` tiles and a reduction of
    ``total`` terms, in one slice (``most_blocks``: what split-K could launch)."""
    plan = _gemm(kernel, dtype, rows, cols, ceil_div(total, TILE_K), grid, sms, useful)
    return dataclasses.replace(
        plan, most_blocks=grid[0] * grid[1] * max(1, ceil_div(total, MIN_SLICE)))


FWD_DIRECT_MAX_K = 16     # the forward with at most this many filters: the direct kernel
FWD_DIRECT_TAPS = 2048    # its filter taps in shared memory at once (kernels/conv2d.cu)


def direct_forward_plan(sizes, stride, pads, sms: int) -> Plan:
    """conv2d_fwd_direct: a thread per output, block (x, k) over 256 outputs (n, oh,
    ow) of filter k; a warp issues C R S multiply-adds a lane (padding taps
    predicated)."""
    n, c, h, w, k, r, s, oh, ow = sizes
    outputs = n * oh * ow
    grid = (ceil_div(outputs, DIRECT_THREADS), k, 1)
    return Plan("conv2d_fwd_direct", (1, DIRECT_THREADS), grid, DIRECT_BLOCKS_PER_SM, sms,
                k * ceil_div(outputs, 32) * 32 * c * r * s, useful_macs(sizes, stride, pads))


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def forward_plan(sizes, stride, pads, dtype, tf32: bool, sms: int, dilation=(1, 1)) -> Plan:
    """The direct kernel for few filters (a GEMM tile of 64 rows would issue 4 to 64
    times the work; dilated, on the spread filter); else the GEMM (dilated: taps
    ``dilation`` apart in its tap table)."""
    n, c, h, w, k, r, s, oh, ow = sizes
    spread = spread_sizes(sizes, dilation)
    if k <= FWD_DIRECT_MAX_K and spread[5] * spread[6] <= FWD_DIRECT_TAPS:
        return dataclasses.replace(direct_forward_plan(spread, stride, pads, sms),
                                   useful=useful_macs(sizes, stride, pads, dilation))
    suffix, rows, cols = tile(k, dtype, tf32)
    grid = (ceil_div(n * oh * ow, cols), ceil_div(k, rows), 1)
    useful = useful_macs(sizes, stride, pads, dilation)
    plain = _row_gemm("conv2d_fwd" + suffix, dtype, rows, cols, grid, c * r * s, sms, useful)
    if fill_score(plain.waves) >= GOOD_FILL:
        return plain
    # split-K: the `_split` kernel (partial sums, then conv2d_fwd_reduce adds them in
    # order and the bias), where it fills the launched waves better
    kernel = "conv2d_fwd" + suffix + "_split"
    crs, tiles = c * r * s, grid[0] * grid[1]
    splits, chunk = split_for_fill(crs, tiles, sms * gemm_blocks_per_sm(kernel, dtype),
                                   n * k * oh * ow, least=2)
    if splits == 1:  # a reduction too short to split: the plain kernel, no reduce launch
        return plain
    split = _split_gemm(kernel, dtype, rows, cols, [(grid[0], crs)], grid[1], splits, chunk,
                        sms, useful)
    return split if fill_score(split.waves) > fill_score(plain.waves) + 1e-9 else plain


def _split_gemm(kernel, dtype, rows, cols, column_blocks, grid_y, splits, chunk, sms,
                useful) -> Plan:
    """A GEMM in ``splits`` slices of ``chunk`` reduction terms (grid.z) over
    ``column_blocks``, ``[(blocks, reduction length), ...]`` (grid.x: one pair, or the
    backward-data phases' in turn), and ``grid_y`` row blocks: each block issues whole
    TILE_K steps of its slice, none past its reduction."""
    grid = (sum(blocks for blocks, _ in column_blocks), grid_y, splits)
    steps = sum(blocks * ceil_div(max(0, min(chunk, length - z * chunk)), TILE_K)
                for blocks, length in column_blocks for z in range(splits))
    longest = max(length for _, length in column_blocks)
    return Plan(kernel, (rows, cols), grid, gemm_blocks_per_sm(kernel, dtype), sms,
                grid_y * rows * cols * steps * TILE_K, useful, splits, chunk,
                grid[0] * grid_y * max(1, ceil_div(longest, MIN_SLICE)))


def split_for_fill(total: int, tiles: int, slots: int, slice_size: int, step: int = 4 * TILE_K,
                   min_slice: int = MIN_SLICE, least: int = 1) -> tuple[int, int]:
    """``(splits, chunk)`` for a reduction of ``total`` terms over ``tiles`` blocks on a
    GPU holding ``slots`` blocks at once: the fewest slices (of whole ``step``s, none
    under ``min_slice`` terms, fewer than 2**31 elements in the ``slice_size``-element
    partial results) whose grid fills GOOD_FILL of its launched waves (a grid under
    one wave counted by its share of one), else the best filling (fewest among
    equals), trying ``least`` slices or more. From the shape and the SM count alone:
    one GPU model always sums in the same order."""
    most = max(1, min((INDEX_LIMIT - 1) // max(1, slice_size), ceil_div(total, min_slice),
                      ceil_div(MAX_WAVES * slots, tiles)))
    best = None
    for wanted in range(min(least, most), most + 1):
        chunk = ceil_div(ceil_div(total, wanted), step) * step
        splits = ceil_div(total, chunk)
        score = fill_score(tiles * splits / slots)
        if score >= GOOD_FILL:
            return splits, chunk
        if best is None or score > best[0] + 1e-9:
            best = (score, splits, chunk)
    return best[1], best[2]


def _phases(size: int, pad: int, stride: int, taps: int):
    """``[(positions, taps), ...]`` per phase p of one axis of backward data: the
    dx positions i with (i + pad) % stride == p, and the filter taps p, p + stride, ...
    that reach them (kernels/conv2d.cu, conv2d_bwd_data_direct)."""
    out = []
    for p in range(stride):
        first = (p - pad) % stride
        out.append((ceil_div(size - first, stride) if first < size else 0,
                    ceil_div(taps - p, stride) if p < taps else 0))
    return out


def direct_data_plan(sizes, stride, pads, sms: int) -> Plan:
    """conv2d_bwd_data_direct: a thread per dx element, grid.z the sh x sw phases;
    a warp issues K x (the phase's taps) multiply-adds a lane (fewer at the border).
    Where its blocks would fill under GOOD_FILL of their waves, grid.y splits the sum
    over the K filters (``chunk`` filters a slice, summed in order after)."""
    n, c, h, w, k, r, s, oh, ow = sizes
    rows, cols = _phases(h, pads[0][0], stride[0], r), _phases(w, pads[1][0], stride[1], s)
    issued = 0
    for hq, r_taps in rows:
        for wq, s_taps in cols:
            issued += ceil_div(n * c * hq * wq, 32) * 32 * k * r_taps * s_taps
    threads = n * c * max(q for q, _ in rows) * max(q for q, _ in cols)
    blocks = ceil_div(threads, DIRECT_THREADS) * stride[0] * stride[1]
    slots = sms * DIRECT_BLOCKS_PER_SM
    splits, chunk = 1, k
    if fill_score(blocks / slots) < GOOD_FILL:
        splits, chunk = split_for_fill(k, blocks, slots, n * c * h * w, step=1,
                                       min_slice=DIRECT_MIN_FILTERS)
    grid = (ceil_div(threads, DIRECT_THREADS), splits, stride[0] * stride[1])
    return Plan("conv2d_bwd_data_direct", (1, DIRECT_THREADS), grid, DIRECT_BLOCKS_PER_SM, sms,
                issued, useful_macs(sizes, stride, pads), splits, chunk)


def axis_phases(size: int, pad: int, stride: int, taps: int, dilation: int = 1):
    """Per phase p of one axis of backward data, ``(first, count, top, [(tap, j), ...])``:
    the dx positions first, first + stride, ... (count of them), those with
    (i + pad) % stride == p; the filter taps t with t dilation % stride == p, the only
    ones that reach them, each from dy position top + (i - first) / stride - j
    (kernels/conv2d.cu, conv2d_bwd_data)."""
    out = []
    for p in range(stride):
        first = (p - pad) % stride
        count = ceil_div(size - first, stride) if first < size else 0
        reach = [(t, (t * dilation - p) // stride) for t in range(taps)
                 if t * dilation % stride == p]
        out.append((first, count, (first + pad - p) // stride, reach))
    return out


def data_gemm_phases(sizes, stride, pads, dilation=(1, 1)):
    """``[(rows phase, columns phase), ...]`` of the backward-data GEMM, row-phase
    major (the order of its grid.x and its table): :func:`axis_phases` of H and W."""
    n, c, h, w, k, r, s, oh, ow = sizes
    rows = axis_phases(h, pads[0][0], stride[0], r, dilation[0])
    cols = axis_phases(w, pads[1][0], stride[1], s, dilation[1])
    return [(hp, wp) for hp in rows for wp in cols]


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def data_plan(sizes, stride, pads, dtype, tf32: bool, sms: int, dilation=(1, 1)) -> Plan:
    """The direct kernel for few channels (dilated: on the spread filter), else the
    GEMM phase by phase over only the taps that reach (dilated: the real taps), its
    reduction split where its grid would fill under GOOD_FILL of its waves."""
    n, c, h, w, k, r, s, oh, ow = sizes
    if c <= DIRECT_MAX_C:
        return dataclasses.replace(
            direct_data_plan(spread_sizes(sizes, dilation), stride, pads, sms),
            useful=useful_macs(sizes, stride, pads, dilation))
    suffix, rows, cols = tile(c, dtype, tf32)
    kernel = "conv2d_bwd_data" + suffix
    column_blocks = [(ceil_div(n * hp[1] * wp[1], cols), k * len(hp[3]) * len(wp[3]))
                     for hp, wp in data_gemm_phases(sizes, stride, pads, dilation)]
    column_blocks = [(blocks, length) for blocks, length in column_blocks if blocks]
    longest = max(length for _, length in column_blocks)
    tiles = sum(blocks for blocks, _ in column_blocks) * ceil_div(c, rows)
    slots = sms * gemm_blocks_per_sm(kernel, dtype)
    splits, chunk = 1, max(1, longest)
    if fill_score(tiles / slots) < GOOD_FILL:
        splits, chunk = split_for_fill(longest, tiles, slots, n * c * h * w)
    return _split_gemm(kernel, dtype, rows, cols, column_blocks, ceil_div(c, rows), splits,
                       chunk, sms, useful_macs(sizes, stride, pads, dilation))


def split_k(total: int, tiles: int, slots: int, slice_size: int = 1,
            min_slice: int = MIN_SLICE, spare: int = 0) -> tuple[int, int]:
    """``(splits, chunk)`` for a reduction of ``total`` terms over ``tiles`` output
    tiles on a GPU holding ``slots`` blocks at once: the split whose blocks fill the
    launched waves best (a grid one block past a wave runs a second wave for it),
    counting a grid under one wave by its share of one; the fewest slices among
    equals; slices of whole reduction steps, none under ``min_slice`` terms, fewer than
    2**31 elements in the ``slice_size``-element partial results and ``spare`` more
    slices. From the shape and the SM count: one GPU model always sums in the same
    order."""
    most = max(1, min((INDEX_LIMIT - 1) // max(1, slice_size) - spare,
                      ceil_div(total, min_slice),
                      ceil_div(MAX_WAVES * slots, tiles)))
    best = None
    for wanted in range(1, most + 1):
        chunk = ceil_div(ceil_div(total, wanted), 4 * TILE_K) * 4 * TILE_K
        splits = ceil_div(total, chunk)
        waves = tiles * splits / slots
        score = fill_score(waves)
        if best is None or score > best[0] + 1e-9:
            best = (score, splits, chunk)
    return best[1], best[2]


def direct_weight_plan(sizes, stride, pads, sms: int) -> Plan:
    """conv2d_bwd_weight_direct: a thread per dw element, grid.y the split-K slices;
    a warp issues one multiply-add a lane a reduction term (padding taps predicated)."""
    n, c, h, w, k, r, s, oh, ow = sizes
    outputs, total = k * c * r * s, n * oh * ow
    tiles = ceil_div(outputs, DIRECT_THREADS)
    splits, chunk = split_k(total, tiles, sms * DIRECT_BLOCKS_PER_SM, outputs,
                            DIRECT_MIN_SLICE)
    return Plan("conv2d_bwd_weight_direct", (1, DIRECT_THREADS), (tiles, splits, 1),
                DIRECT_BLOCKS_PER_SM, sms, ceil_div(outputs, 32) * 32 * total,
                useful_macs(sizes, stride, pads), splits, chunk,
                tiles * max(1, ceil_div(total, DIRECT_MIN_SLICE)))


def weight_columns(c: int, r: int, s: int) -> int:
    """The weight-gradient GEMM's columns: ``(r, s, c)``, channel fastest, over the
    channels rounded up to 4 (kernels/conv2d.cu: a thread loads 4 channels of one
    tap)."""
    return ceil_div(c, 4) * 4 * r * s


def weight_scratch(sizes) -> int:
    """Slices of the GEMM's partial sums past the split's: one for the columns of
    the channels past C that :func:`weight_columns` pads with, 0 without any."""
    return int(sizes[1] % 4 != 0)


def packed_dy(sizes) -> bool:
    """Whether the weight-gradient GEMM reads dy as aligned vectors (the ``_vec``
    kernels): each image's OH OW values a whole number of 4-element vectors."""
    return sizes[7] * sizes[8] % 4 == 0


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def weight_plan(sizes, stride, pads, dtype, tf32: bool, sms: int, dilation=(1, 1)) -> Plan:
    """The GEMM, or the direct kernel where the GEMM's tiles would be under half
    used (few filters times short filters). Dilated: either on the spread filter,
    its zero taps' gradients computed and dropped (issued, not useful). The GEMM
    reads dy as vectors (``_vec``) where :func:`packed_dy`."""
    if tuple(dilation) != (1, 1):
        return dataclasses.replace(
            weight_plan(spread_sizes(sizes, dilation), stride, pads, dtype, tf32, sms),
            useful=useful_macs(sizes, stride, pads, dilation))
    n, c, h, w, k, r, s, oh, ow = sizes
    crs, total, columns = c * r * s, n * oh * ow, weight_columns(c, r, s)
    suffix, rows, cols = tile(k, dtype, tf32)
    if 2 * k * crs < ceil_div(k, rows) * rows * ceil_div(columns, cols) * cols:
        return direct_weight_plan(sizes, stride, pads, sms)
    kernel = "conv2d_bwd_weight" + suffix + ("_vec" if packed_dy(sizes) else "")
    tiles = ceil_div(columns, cols) * ceil_div(k, rows)
    splits, chunk = split_k(total, tiles, sms * gemm_blocks_per_sm(kernel, dtype), k * crs,
                            spare=weight_scratch(sizes))
    grid = (ceil_div(columns, cols), ceil_div(k, rows), splits)
    # every slice but the last runs chunk / TILE_K steps
    steps = (splits - 1) * (chunk // TILE_K) + ceil_div(total - (splits - 1) * chunk, TILE_K)
    plan = _gemm(kernel, dtype, rows, cols, 0, grid, sms, useful_macs(sizes, stride, pads),
                 splits, chunk)
    return dataclasses.replace(plan, issued=grid[0] * grid[1] * rows * cols * steps * TILE_K,
                               most_blocks=tiles * max(1, ceil_div(total, MIN_SLICE)))
