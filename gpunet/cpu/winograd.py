"""Stride-1 convolution by Winograd's minimal filtering F(m x m, r x r).

An ``r x r`` correlation over an ``alpha x alpha`` input tile (``alpha = m + r - 1``)
gives an ``m x m`` output tile as

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise)

so ``alpha**2`` multiplications replace ``m**2 r**2``: 36 instead of 144 for
F(4x4, 3x3), 49 instead of 225 for F(3x3, 5x5). Summed over channels, each of
the ``alpha**2`` elementwise products becomes one GEMM ``(K, C) @ (C, tiles)``,
which is where the time goes; the transforms are small GEMMs with fixed matrices.

Backward is the adjoint of each step, so it reuses the forward's transformed
input and filters: with ``Z = A dY A^T`` per output tile,
``dg = G^T (Z (x) V) G`` summed over tiles and ``dd = B (U^T Z) B^T`` overlap-added.

The matrices come from Toom-Cook interpolation at the points 0, 1, -1, 2, -2,
1/2 (as many as needed) and infinity; more points mean larger tiles and fewer
multiplications but more float32 rounding, so ``alpha`` stays at most 7.
"""
from __future__ import annotations

import functools

import numpy

from .._context import Context
from ..backend import common_array_module
from . import parallel

POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5)


@functools.cache
def transforms(m: int, r: int):
    """``(A^T, G, B^T)`` of F(m, r) in float64: ``(m, alpha)``, ``(alpha, r)``,
    ``(alpha, alpha)``, with ``y = A^T ((G g) * (B^T d))`` the 1-D correlation
    ``y[i] = sum_k g[k] d[i + k]``.

    Convolution is a polynomial product ``s = h g``: evaluate both factors at
    ``alpha`` points (``V_m h``, ``V_r g``), multiply, interpolate (``V^-1``).
    Correlation is its transpose in ``h``: ``A^T = V_m^T``, ``G = V_r``,
    ``B^T = V^-T``.
    """
    alpha = m + r - 1
    if not 2 <= alpha <= len(POINTS) + 1:
        raise ValueError(f"Winograd F({m}, {r}): tile size {alpha} is outside 2..{len(POINTS) + 1}")
    points = POINTS[:alpha - 1]

    def vandermonde(columns):
        # one row per point: its powers; the point at infinity keeps the top coefficient
        v = numpy.zeros((alpha, columns))
        v[:-1] = numpy.array(points)[:, None] ** numpy.arange(columns)
        v[-1, -1] = 1.0
        return v

    return vandermonde(m).T, vandermonde(r), numpy.linalg.inv(vandermonde(alpha)).T


@functools.cache
def _transforms_as(m: int, r: int, dtype):
    """``(A^T, G, B^T)`` in ``dtype``, and ``kron(G, G)`` for the filters."""
    a_t, g, b_t = transforms(m, r)
    return a_t.astype(dtype), g.astype(dtype), b_t.astype(dtype), numpy.kron(g, g).astype(dtype)


def _on_both_tile_axes(t, x):
    """``t`` (``(p, q)``) applied along both tile axes of ``x``, whose leading axes
    are the tile's ``(q, q)`` (the rest flattened or not): ``(p*p, rest)``.

    Two GEMMs with a ``q``-long inner dimension instead of one with ``q*q``
    against ``kron(t, t)``: 2q instead of q^2 multiply-adds per value (timings:
    bench/results/cpu-choices-2026-11.md).
    """
    p, q = t.shape
    rows_done = parallel.matmul(t, x.reshape(q, -1)).reshape(p, q, -1)  # t[i', i] x[i, j, .]
    return parallel.matmul(t, rows_done).reshape(p * p, -1)  # then t[j', j] along j, per i'


def tile_size(out_size: int, r: int) -> int:
    """The output tile ``m`` for an output of ``out_size`` pixels and an ``r``-tap
    kernel: the fewest multiplications (tiles times ``alpha**2``, padding
    included), the smaller tile on a tie."""
    def products(m):
        return (-(-out_size // m)) ** 2 * (m + r - 1) ** 2
    return min(range(2, len(POINTS) + 3 - r), key=lambda m: (products(m), m))


# The transform-domain products, (alpha^2, K, N*tiles), are the largest
# temporaries (40 MB for AlexNet-CIFAR's conv2 at batch 64). Built this many
# bytes at a time, a slice of the tile columns each, they stay below glibc's
# mmap threshold (no fresh pages to fault in every step) and closer to the
# caches, and the backward's peak memory drops by the difference. The budget is
# shared by gpunet's threads, which run their batch chunks at once: with 24 MiB
# each, two threads took the AlexNet-CIFAR step from 137 to 175 MiB.
CHUNK_BYTES = 24 * 2**20


def _column_chunks(columns: int, bytes_per_column: int):
    """Slices of ``range(columns)``, as few as keep each under this thread's share
    of ``CHUNK_BYTES``."""
    budget = CHUNK_BYTES // parallel.num_threads()
    count = max(1, -(-columns * bytes_per_column // budget))
    size = -(-columns // count)
    if count == 1:
        yield slice(None)
        return
    for start in range(0, columns, size):
        yield slice(start, min(start + size, columns))


class WinogradContext(Context):
    """What backward needs: the transformed input and filters, and the geometry."""

    __slots__ = ("v", "u", "x_shape", "w_shape", "pads", "m", "has_bias")

    def __init__(self, v, u, x_shape, w_shape, pads, out_hw, m, has_bias):
        super().__init__("conv2d", (x_shape[0], w_shape[0], *out_hw))
        self.v = v  # (alpha^2, C, tiles*N)
        self.u = u  # (alpha^2, K, C)
        self.x_shape, self.w_shape, self.pads, self.m = x_shape, w_shape, pads, m
        self.has_bias = has_bias

    def _backward(self, dy, input_grad):
        return backward(dy, self, input_grad)


def forward(x, weight, bias, pads, out_hw, m):
    """``(y, ctx)`` of the stride-1 correlation of ``x`` with ``weight``; ``pads``
    as in :func:`gpunet._context.normalize_padding`."""
    xp = common_array_module(x=x, weight=weight)
    n, c, h, w = x.shape
    k, _, r, _ = weight.shape
    alpha = m + r - 1
    a_t, _, b_t, gg = (xp.asarray(t) for t in _transforms_as(m, r, numpy.dtype(x.dtype)))
    tiles_hw = tuple(-(-o // m) for o in out_hw)

    # Tiles start every m pixels and are alpha wide: pad (with zeros) so the last
    # one fits, then read every tile through a strided view. The batch goes
    # innermost so that view copies runs of N values, not of a 2-tile row.
    (pt, _), (pl, _) = pads
    padded = xp.zeros((c, tiles_hw[0] * m + r - 1, tiles_hw[1] * m + r - 1, n), x.dtype)
    rows, cols = min(h, padded.shape[1] - pt), min(w, padded.shape[2] - pl)
    padded[:, pt:pt + rows, pl:pl + cols] = x[:, :, :rows, :cols].transpose(1, 2, 3, 0)
    sc, sh, sw, sn = padded.strides
    tiles = xp.lib.stride_tricks.as_strided(
        padded, (alpha, alpha, c, *tiles_hw, n), (sh, sw, sc, sh * m, sw * m, sn))
    v = _on_both_tile_axes(b_t, tiles).reshape(alpha * alpha, c, -1)
    # The filters take kron(G, G) in one GEMM: no transposed copy of them first,
    # which slowed VGG-16's conv5_2 filter transform (51 MB of them) several times.
    u = parallel.matmul(gg, weight.reshape(k * c, r * r).T).reshape(alpha * alpha, k, c)
    del padded, tiles
    y_tiles = xp.empty((m * m, k, v.shape[2]), x.dtype)
    for cols in _column_chunks(v.shape[2], alpha * alpha * k * x.dtype.itemsize):
        # (alpha^2, K, columns): one GEMM per tile position
        products = parallel.matmul(u, v[:, :, cols])
        y_tiles[:, :, cols] = _on_both_tile_axes(a_t, products).reshape(m * m, k, -1)
        del products
    y_tiles = y_tiles.reshape(m, m, k, *tiles_hw, n)
    # Back to (N, K, OH, OW) in two copies: first the tile pixels into place with the
    # batch still innermost (runs of N values), then the batch to the front, adding
    # the bias on the way. One transpose straight from the tiles reads each pixel
    # from afar and was slower (bench/results/cpu-choices-2026-11.md).
    planes = xp.empty((k, tiles_hw[0], m, tiles_hw[1], m, n), x.dtype)
    planes[...] = y_tiles.transpose(2, 3, 0, 4, 1, 5)
    del y_tiles
    planes = planes.reshape(k, tiles_hw[0] * m, tiles_hw[1] * m, n)[:, :out_hw[0], :out_hw[1]]
    y = xp.empty((n, k, *out_hw), x.dtype)
    if bias is not None:
        xp.add(planes.transpose(3, 0, 1, 2), bias[:, None, None], out=y)
    else:
        y[...] = planes.transpose(3, 0, 1, 2)
    return y, WinogradContext(v, u, tuple(x.shape), tuple(weight.shape), pads, tuple(out_hw), m,
                              bias is not None)


def backward(dy, ctx, input_grad=True):
    """``(dx, dweight, dbias)``: the adjoint of each forward step."""
    v, u, x_shape, w_shape, pads, m = ctx.v, ctx.u, ctx.x_shape, ctx.w_shape, ctx.pads, ctx.m
    out_hw, has_bias = ctx.out_shape[2:], ctx.has_bias
    xp = common_array_module(dy=dy, v=v)
    n, c, h, w = x_shape
    k, _, r, _ = w_shape
    alpha = m + r - 1
    a_t, _, b_t, gg = (xp.asarray(t) for t in _transforms_as(m, r, numpy.dtype(dy.dtype)))
    tiles_hw = tuple(-(-o // m) for o in out_hw)

    # (N, K, OH, OW) -> (m, m, K, TH, TW, N), zero past the output's edge: the
    # forward's two copies in reverse, batch to the back first
    full_hw = (tiles_hw[0] * m, tiles_hw[1] * m)
    planes = (xp.empty if tuple(out_hw) == full_hw else xp.zeros)((k, *full_hw, n), dy.dtype)
    planes[:, :out_hw[0], :out_hw[1]] = dy.transpose(1, 2, 3, 0)
    dbias = planes.reshape(k, -1).sum(axis=1) if has_bias else None  # contiguous rows: fast
    dy_tiles = xp.ascontiguousarray(
        planes.reshape(k, tiles_hw[0], m, tiles_hw[1], m, n).transpose(2, 4, 0, 1, 3, 5))
    del planes
    dy_tiles = dy_tiles.reshape(m * m, k, -1)
    du = None  # (alpha^2, K, C), summed over the column chunks
    dv = xp.empty((alpha * alpha, c, v.shape[2]), dy.dtype) if input_grad else None
    for cols in _column_chunks(v.shape[2], alpha * alpha * k * dy.dtype.itemsize):
        dy_part = xp.ascontiguousarray(dy_tiles[:, :, cols]).reshape(m * m, -1)
        z = _on_both_tile_axes(a_t.T, dy_part).reshape(alpha * alpha, k, -1)
        du_part = parallel.matmul(z, v[:, :, cols].transpose(0, 2, 1))
        if du is None:
            du = du_part
        else:
            du += du_part
        if input_grad:  # (alpha^2, C, columns)
            parallel.matmul(u.transpose(0, 2, 1), z, out=dv[:, :, cols])
        del z, dy_part
    del dy_tiles
    dweight = parallel.matmul(du.reshape(alpha * alpha, k * c).T, gg).reshape(k, c, r, r)
    if not input_grad:
        return None, dweight, dbias
    d_tiles = _on_both_tile_axes(b_t.T, dv).reshape(alpha, alpha, c, *tiles_hw, n)
    del dv
    d_padded = xp.zeros((c, tiles_hw[0] * m + r - 1, tiles_hw[1] * m + r - 1, n), dy.dtype)
    for i in range(alpha):  # overlap-add: neighbouring tiles share r - 1 rows/columns
        for j in range(alpha):
            d_padded[:, i:i + m * tiles_hw[0]:m, j:j + m * tiles_hw[1]:m] += d_tiles[i, j]
    (pt, _), (pl, _) = pads
    dx = xp.zeros((n, c, h, w), dy.dtype)
    rows, cols = min(h, d_padded.shape[1] - pt), min(w, d_padded.shape[2] - pl)
    dx[:, :, :rows, :cols] = d_padded[:, pt:pt + rows, pl:pl + cols].transpose(3, 0, 1, 2)
    return dx, dweight, dbias
