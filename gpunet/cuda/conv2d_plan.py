"""What each conv2d launch issues, from the shape and the device's SM count alone.

A :class:`Plan` is one launch of kernels/conv2d.cu: the kernel, its tile, its grid,
the blocks an SM holds (the kernel's ``__launch_bounds__`` minimum), the waves that
grid makes on ``sms`` SMs, and the multiply-adds it issues against the useful ones
(``N K OH OW C R S``, the forward's count, for every pass: zero taps, padded tile
rows and columns and a reduction rounded up to whole steps are issued, not
useful). The launchers in gpunet/cuda/conv2d.py launch what these functions plan;
``bench/gpu_plan.py`` prints them for the benchmark cases without a GPU.
"""
from __future__ import annotations

import dataclasses
import math

import numpy

TILE_K = 8  # kernels/conv2d.cu's reduction step (its default -DTILE_K)


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


def useful_macs(sizes) -> int:
    n, c, _, _, k, r, s, oh, ow = sizes
    return n * k * oh * ow * c * r * s


def gemm_blocks_per_sm(kernel: str, dtype) -> int:
    """The second argument of the kernel's ``__launch_bounds__`` (GEMM_MIN_BLOCKS:
    two in float, one in double; one for the float 128 x 128 backward kernels)."""
    if numpy.dtype(dtype).itemsize == 8 or kernel in ("conv2d_bwd_data", "conv2d_bwd_weight"):
        return 1
    return 2


INDEX_LIMIT = 2**31
TARGET_BLOCKS = 256    # split-K aims at about this many blocks, whatever the GPU: the
                       # split, hence the summation order, depends on the shapes only


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


def forward_plan(sizes, dtype, tf32: bool, sms: int) -> Plan:
    n, c, h, w, k, r, s, oh, ow = sizes
    suffix, rows, cols = tile(k, dtype, tf32)
    grid = (ceil_div(n * oh * ow, cols), ceil_div(k, rows), 1)
    return _gemm("conv2d_fwd" + suffix, dtype, rows, cols, ceil_div(c * r * s, TILE_K), grid,
                 sms, useful_macs(sizes))


def data_plan(sizes, stride, pads, dtype, tf32: bool, sms: int) -> Plan:
    n, c, h, w, k, r, s, oh, ow = sizes
    suffix, rows, cols = tile(c, dtype, tf32)
    grid = (ceil_div(n * h * w, cols), ceil_div(c, rows), 1)
    return _gemm("conv2d_bwd_data" + suffix, dtype, rows, cols, ceil_div(k * r * s, TILE_K),
                 grid, sms, useful_macs(sizes))


def split_k(total: int, tiles: int, slice_size: int = 1) -> tuple[int, int]:
    """``(splits, chunk)`` for a reduction of ``total`` terms over ``tiles`` output
    tiles: enough slices to fill the GPU, none shorter than 256 terms, and fewer
    than 2**31 elements in all the ``slice_size``-element partial results."""
    most = max(1, (INDEX_LIMIT - 1) // max(1, slice_size))
    splits = max(1, min(ceil_div(TARGET_BLOCKS, tiles), ceil_div(total, 256), most))
    chunk = ceil_div(ceil_div(total, splits), 32) * 32  # whole reduction steps
    return ceil_div(total, chunk), chunk


def weight_plan(sizes, dtype, tf32: bool, sms: int) -> Plan:
    n, c, h, w, k, r, s, oh, ow = sizes
    crs, total = c * r * s, n * oh * ow
    suffix, rows, cols = tile(k, dtype, tf32)
    tiles = ceil_div(crs, cols) * ceil_div(k, rows)
    splits, chunk = split_k(total, tiles, k * crs)
    grid = (ceil_div(crs, cols), ceil_div(k, rows), splits)
    # every slice but the last runs chunk / TILE_K steps
    steps = (splits - 1) * (chunk // TILE_K) + ceil_div(total - (splits - 1) * chunk, TILE_K)
    plan = _gemm("conv2d_bwd_weight" + suffix, dtype, rows, cols, 0, grid, sms,
                 useful_macs(sizes), splits, chunk)
    return dataclasses.replace(plan, issued=grid[0] * grid[1] * rows * cols * steps * TILE_K)
