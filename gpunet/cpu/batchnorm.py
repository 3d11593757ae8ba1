"""The CPU accelerator of batch normalisation: the passes of :mod:`gpunet.ops.batchnorm`
over row chunks on gpunet's threads (:mod:`.parallel`; a single chunk below
``MIN_VALUES_PER_CHUNK`` values a chunk, as for every layer of LeNet-5), each pass
over ``(N, C*L)`` rows with per-channel values repeated to a sample's length, so that
NumPy's inner loops run a whole sample long.

Each chunk takes its own two-pass statistics (the sums of a sample's ``L`` values of
a channel by BLAS, reading the array once), merged in order (Chan et al.), so any
split gives the same values up to rounding, with one hand-over to the threads for
the statistics and one for the output. The chunk's values, centred by its own mean,
are kept for the backward instead of ``x_hat``: ``x_hat = (centred - shift) inv_std``
with ``shift`` the chunk mean's offset from the batch's, so that the output takes
two passes (``y = centred a + (beta - shift a)``, ``a = gamma inv_std``) and ``x_hat``
is never written. Where the time goes: bench/results/bn-cpu-step-*.md.
"""
from __future__ import annotations

import functools
import math

import numpy

from .._context import BatchNormContext
from . import parallel

# A chunk is worth a thread from this many values. Its passes are bound by memory
# bandwidth, which a second core did not add on the 2-core VM: there two threads
# lost to one up to 2**21 values and drew level at 2**23
# (bench/results/bn-cpu-step-2026-12-06b.md).
MIN_VALUES_PER_CHUNK = 2**23


def _row_dots_by_matmul(a, b):
    """``numpy.vecdot(a, b)`` of real arrays before NumPy 2: a batched (1, L) @ (L, 1)."""
    return numpy.matmul(a[..., None, :], b[..., :, None])[..., 0, 0]


# Either reduces each row in one vectorised loop, faster than einsum over (N, C*L)
# (bench/results/bn-cpu-step-2026-12-06b.md).
_row_dots = getattr(numpy, "vecdot", None) or _row_dots_by_matmul


@functools.lru_cache(maxsize=64)
def _ones(length, dtype):
    ones = numpy.ones(length, dtype)
    ones.flags.writeable = False  # shared by every call
    return ones


def _channel_sums(a2, channels):
    """Per-channel sum of ``a2``, an ``(n, C*L)`` view of ``(n, C, ...)``: each
    ``(n, c)`` row's ``L`` values by BLAS (a matrix-vector product with ones), then
    the ``n`` row sums of each channel; with ``L = 1`` the columns' sums."""
    rows, per_row = a2.shape[0], a2.shape[1] // channels
    if per_row == 1:
        return _ones(rows, a2.dtype) @ a2
    row_sums = a2.reshape(rows * channels, per_row) @ _ones(per_row, a2.dtype)
    return row_sums.reshape(rows, channels).sum(axis=0)


def _channel_dots(a2, b2, channels):
    """Per-channel sum of ``a2 * b2`` (both ``(n, C*L)``), without the product array."""
    rows, per_row = a2.shape[0], a2.shape[1] // channels
    if per_row == 1:
        return numpy.einsum("nc,nc->c", a2, b2)
    shape = (rows, channels, per_row)
    return _row_dots(a2.reshape(shape), b2.reshape(shape)).sum(axis=0)


def _expand(per_channel, sample_size):
    """``(C,)`` repeated to one sample's ``C*L`` values. Broadcast against ``(N, C*L)``
    it leaves NumPy inner loops a whole sample long; broadcasting ``(C, 1, 1)``
    against ``(N, C, H, W)`` loops over ``H*W`` values at a time, and was slower
    (bench/results/cpu-choices-2026-11.md)."""
    repeats = sample_size // max(1, per_channel.shape[0])
    return per_channel if repeats == 1 else numpy.repeat(per_channel, repeats)


def _batch_stats(x2, channels, chunks, centred):
    """``(mean, biased var, shifts)`` per channel of ``x2`` (``(N, C*L)``): each chunk
    of rows takes two passes on its thread, its offset from one sample per channel
    (the pivot; see :mod:`gpunet.ops.batchnorm`) and its squared deviations from its
    own mean, which it leaves in ``centred``; the chunks are merged in order by
    Chan, Golub and LeVeque's update, as kernels/batchnorm.cu merges its runs.
    ``shifts[k]``: the batch's offset minus chunk ``k``'s, per channel (``None``
    for a single chunk: nothing to shift)."""
    per_row = x2.shape[1] // channels  # values of a channel in one sample
    pivot = x2[0].reshape(channels, -1)[:, 0]
    pivot_row = _expand(pivot, x2.shape[1])

    def centre(rows):
        part = centred[rows]
        numpy.subtract(x2[rows], pivot_row, out=part)
        offset = _channel_sums(part, channels) / ((rows.stop - rows.start) * per_row)
        part -= _expand(offset, x2.shape[1])
        return offset, _channel_dots(part, part, channels)

    parts = parallel.map_chunks(centre, chunks)
    offset, m2 = parts[0]
    seen = (chunks[0].stop - chunks[0].start) * per_row
    for rows, (chunk_offset, chunk_m2) in zip(chunks[1:], parts[1:]):
        n = (rows.stop - rows.start) * per_row
        delta = chunk_offset - offset
        offset = offset + delta * (n / (seen + n))
        m2 = m2 + chunk_m2 + delta * delta * (seen * n / (seen + n))
        seen += n
    shifts = [None] if len(chunks) == 1 else [offset - chunk_offset for chunk_offset, _ in parts]
    return pivot + offset, m2 / seen, shifts


def forward(x, weight, bias, running, eps):
    """``(y, ctx)`` for the NumPy array ``x``, as :func:`gpunet.ops.batchnorm._forward`:
    by the batch's statistics (``ctx.batch_stats``) when ``running`` is ``None``, else
    by ``running = (mean, var)``."""
    channels, sample_size = weight.shape[0], math.prod(x.shape[1:])
    x2 = x.reshape(x.shape[0], sample_size)  # (N, C*L): see _expand
    chunks = parallel.batch_slices(x2.shape[0], x2.size, min_work=MIN_VALUES_PER_CHUNK)
    centred = numpy.empty_like(x2)
    shifts = [None] * len(chunks)  # None: centred by the batch's own mean
    if running is None and channels == 0:  # training on no channels: no statistics
        mean = var = numpy.zeros(0, x.dtype)
    elif running is None:
        mean, var, shifts = _batch_stats(x2, channels, chunks, centred)
    else:  # evaluation centres x by the running mean below
        mean, var = (a.astype(x.dtype) for a in running)
    stats = (mean, var) if running is None else None
    inv_std = 1.0 / numpy.sqrt(var + eps)
    scale = weight * inv_std
    scale_row = _expand(scale, sample_size)
    # (centred - shift) inv_std gamma + beta = centred scale + (beta - shift scale)
    bias_rows = [_expand(bias if shift is None else bias - shift * scale, sample_size)
                 for shift in shifts]
    mean_row = _expand(mean, sample_size) if stats is None else None
    y = numpy.empty_like(x2)

    def normalise(k):
        rows = chunks[k]
        if mean_row is not None:
            numpy.subtract(x2[rows], mean_row, out=centred[rows])
        numpy.multiply(centred[rows], scale_row, out=y[rows])
        y[rows] += bias_rows[k]

    parallel.map_chunks(normalise, list(range(len(chunks))))
    # saved centred, not as x_hat: the backward below knows the chunks' shifts
    return y.reshape(x.shape), BatchNormContext(
        centred.reshape(x.shape), inv_std, weight, running is None,
        functools.partial(backward, chunks=chunks, shifts=shifts), stats)


def backward(dy, centred, weight, inv_std, training, input_grad, chunks, shifts):
    """``(dx, dweight, dbias)`` by the formula of :mod:`gpunet.ops.batchnorm`, in the
    forward's row ``chunks``, from ``centred`` (``x_hat = (centred - shifts[k])
    inv_std`` in chunk ``k``, ``centred inv_std`` where the shift is ``None``)."""
    channels, sample_size = dy.shape[1], math.prod(dy.shape[1:])  # not size // N: N may be 0
    dy2, centred2 = (a.reshape(dy.shape[0], sample_size) for a in (dy, centred))
    if channels == 0:
        sums = [(numpy.zeros(0, dy.dtype),) * 2 for _ in chunks]
    else:
        sums = parallel.map_chunks(
            lambda rows: (_channel_sums(dy2[rows], channels),
                          _channel_dots(dy2[rows], centred2[rows], channels)), chunks)
    dbias = sum(dy_sum for dy_sum, _ in sums)
    # sum(dy x_hat) = inv_std sum(dy (centred - shift)), the shift taken per chunk
    dweight = inv_std * sum(dot if shift is None else dot - shift * dy_sum
                            for (dy_sum, dot), shift in zip(sums, shifts))
    if not input_grad:
        return None, dweight, dbias
    g_row = _expand(weight * inv_std, sample_size)
    if training:  # the batch statistics' own gradients
        m = dy.shape[0] * math.prod(dy.shape[2:])
        # dbias / m + x_hat dweight / m = centred k1 + k0, k0 taking the chunk's shift
        k1 = inv_std * dweight / m
        k1_row = _expand(k1, sample_size)
        k0_rows = [_expand(dbias / m if shift is None else dbias / m - k1 * shift, sample_size)
                   for shift in shifts]
    dx = numpy.empty_like(dy2)

    def input_gradient(k):
        rows = chunks[k]
        out = dx[rows]
        if not training:
            numpy.multiply(dy2[rows], g_row, out=out)
            return
        # gamma inv_std (dy - dbias / m - x_hat dweight / m), in four passes over dx
        # and no array-sized temporary
        numpy.multiply(centred2[rows], k1_row, out=out)
        out += k0_rows[k]
        numpy.subtract(dy2[rows], out, out=out)
        out *= g_row

    parallel.map_chunks(input_gradient, list(range(len(chunks))))
    return dx.reshape(dy.shape), dweight, dbias
