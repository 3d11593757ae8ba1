"""The CPU accelerator of batch normalisation: the textbook passes of
:mod:`gpunet.ops.batchnorm` over row chunks on gpunet's threads (:mod:`.parallel`),
each pass over ``(N, C*L)`` rows with per-channel values repeated to a sample's
length, so that NumPy's inner loops run a whole sample long. Each chunk takes its
own two-pass statistics, merged in order (Chan et al.), so any split gives the same
values up to rounding, with one hand-over to the threads for the statistics and one
for the normalisation; the backward's input gradient takes four passes and no
array-sized temporary. Where the time goes: bench/results/bn-cpu-step-*.md.
"""
from __future__ import annotations

import math

import numpy

from .._context import BatchNormContext
from . import parallel


def _channel_sum(a2, channels):
    """Per-channel sum of ``a2``, an ``(N, C*L)`` view of ``(N, C, ...)``: column sums
    first (adding contiguous rows, which NumPy does fast), then one sum per channel."""
    return a2.sum(axis=0).reshape(channels, a2.shape[1] // max(1, channels)).sum(axis=1)


def _channel_dot(a2, b2, channels):
    """Per-channel sum of ``a2 * b2`` (both ``(N, C*L)``), without the product array."""
    return numpy.einsum("nl,nl->l", a2, b2).reshape(channels, a2.shape[1] // max(1, channels)) \
        .sum(axis=1)


def _expand(per_channel, sample_size):
    """``(C,)`` repeated to one sample's ``C*L`` values. Broadcast against ``(N, C*L)``
    it leaves NumPy inner loops a whole sample long; broadcasting ``(C, 1, 1)``
    against ``(N, C, H, W)`` loops over ``H*W`` values at a time, and was slower
    (bench/results/cpu-choices-2026-11.md)."""
    repeats = sample_size // max(1, per_channel.shape[0])
    return per_channel if repeats == 1 else numpy.repeat(per_channel, repeats)


# A batch norm's chunk is worth a thread only from this many values: its passes are
# bound by memory bandwidth, which a second core did not add on the 2-core VM (two
# threads lost to one up to 2**21 values a chunk and drew level at 2**23,
# bench/results/bn-cpu-step-2026-12-06b.md). LeNet-5's training step with every
# batch norm on the calling thread: bench/results/cpu-step-2026-12-06c.md.
MIN_VALUES_PER_CHUNK = 2**23


def _row_chunks(x2):
    # batch_slices gives a chunk MIN_WORK_PER_CHUNK of the work it is handed
    work = x2.size * parallel.MIN_WORK_PER_CHUNK // MIN_VALUES_PER_CHUNK
    return parallel.batch_slices(x2.shape[0], work)


def _batch_stats(x2, channels, chunks):
    """``(mean, biased var, centred, shifts)`` per channel of ``x2`` (``(N, C*L)``):
    each chunk of rows takes two passes on its thread, its offset from one sample
    per channel (the pivot; see :mod:`gpunet.ops.batchnorm`) and its squared
    deviations from its own mean, left in ``centred``; the chunks are merged in order
    by Chan, Golub and LeVeque's update, as kernels/batchnorm.cu merges its runs.
    One hand-over to the threads, not two. ``shifts[k]``: what chunk ``k``'s rows of
    ``centred`` still need subtracted to be ``(x - pivot) - offset`` (``None`` for a
    single chunk)."""
    per_row = x2.shape[1] // channels  # values of a channel in one sample
    pivot = x2[0].reshape(channels, -1)[:, 0]
    pivot_row = _expand(pivot, x2.shape[1])
    centred = numpy.empty_like(x2)

    def centre(rows):
        part = centred[rows]
        numpy.subtract(x2[rows], pivot_row, out=part)
        offset = _channel_sum(part, channels) / ((rows.stop - rows.start) * per_row)
        part -= _expand(offset, x2.shape[1])
        return offset, _channel_dot(part, part, channels)

    parts = parallel.map_chunks(centre, chunks)
    offset, m2 = parts[0]
    seen = (chunks[0].stop - chunks[0].start) * per_row
    for rows, (chunk_offset, chunk_m2) in zip(chunks[1:], parts[1:]):
        n = (rows.stop - rows.start) * per_row
        delta = chunk_offset - offset
        offset = offset + delta * (n / (seen + n))
        m2 = m2 + chunk_m2 + delta * delta * (seen * n / (seen + n))
        seen += n
    shifts = [None] if len(chunks) == 1 else \
        [_expand(offset - chunk_offset, x2.shape[1]) for chunk_offset, _ in parts]
    return pivot + offset, m2 / seen, centred, shifts


def forward(x, weight, bias, running, eps):
    """``(y, ctx)`` for the NumPy array ``x``, as :func:`gpunet.ops.batchnorm._forward`:
    by the batch's statistics (``ctx.batch_stats``) when ``running`` is ``None``, else
    by ``running = (mean, var)``."""
    channels = weight.shape[0]
    x2 = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # (N, C*L): see _expand
    chunks = _row_chunks(x2)
    shifts = [None] * len(chunks)
    if running is None and channels == 0:  # training on no channels: no statistics
        mean, var = (numpy.empty(0, x.dtype) for _ in range(2))
        x_hat, stats = numpy.empty_like(x2), (mean, var)
    elif running is None:
        mean, var, x_hat, shifts = _batch_stats(x2, channels, chunks)
        stats = mean, var
    else:
        mean, var = (a.astype(x.dtype) for a in running)
        x_hat, stats = numpy.empty_like(x2), None
    inv_std = 1.0 / numpy.sqrt(var + eps)
    inv_std_row = _expand(inv_std, x2.shape[1])
    weight_row, bias_row = _expand(weight, x2.shape[1]), _expand(bias, x2.shape[1])
    # training centred x already; evaluation centres it here (x_hat is normalised in place)
    mean_row = _expand(mean, x2.shape[1]) if stats is None else None
    y = numpy.empty_like(x2)

    def normalise(k):
        rows = chunks[k]
        if mean_row is not None:
            numpy.subtract(x2[rows], mean_row, out=x_hat[rows])
        elif shifts[k] is not None:  # from the chunk's own mean to the batch's
            x_hat[rows] -= shifts[k]
        x_hat[rows] *= inv_std_row
        numpy.multiply(x_hat[rows], weight_row, out=y[rows])
        y[rows] += bias_row

    parallel.map_chunks(normalise, list(range(len(chunks))))
    return y.reshape(x.shape), BatchNormContext(x_hat.reshape(x.shape), inv_std, weight,
                                                running is None, backward, stats)


def backward(dy, x_hat, weight, inv_std, training, input_grad):
    """``(dx, dweight, dbias)`` by the formula of :mod:`gpunet.ops.batchnorm`, in row
    chunks."""
    channels, sample_size = dy.shape[1], math.prod(dy.shape[1:])  # not size // N: N may be 0
    dy2, x_hat2 = (a.reshape(dy.shape[0], sample_size) for a in (dy, x_hat))
    chunks = _row_chunks(dy2)
    sums = parallel.map_chunks(lambda rows: (_channel_sum(dy2[rows], channels),
                                             _channel_dot(dy2[rows], x_hat2[rows], channels)),
                               chunks)
    dbias, dweight = (sum(parts) for parts in zip(*sums))
    if not input_grad:
        return None, dweight, dbias
    g_scale = weight * inv_std
    g_row = _expand(g_scale, sample_size)
    if training:  # the batch statistics' own gradients
        m = dy.shape[0] * math.prod(dy.shape[2:])
        x_hat_scale = _expand(dweight / m, sample_size)
        shift = _expand(dbias / m, sample_size)
    dx = numpy.empty_like(dy2)

    def input_gradient(rows):
        out = dx[rows]
        if not training:
            numpy.multiply(dy2[rows], g_row, out=out)
            return
        # gamma inv_std (dy - dbias / m - x_hat dweight / m), in four passes over dx
        # and no array-sized temporary
        numpy.multiply(x_hat2[rows], x_hat_scale, out=out)
        out += shift
        numpy.subtract(dy2[rows], out, out=out)
        out *= g_row

    parallel.map_chunks(input_gradient, chunks)
    return dx.reshape(dy.shape), dweight, dbias
