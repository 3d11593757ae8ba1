"""Batch normalisation over the channel axis 1 of ``(N, C)``, ``(N, C, L)`` or
``(N, C, H, W)``; statistics are per channel, over every other axis.

The notes' equations: ``mu = mean(z)``, ``var = mean((z - mu)^2)``,
``z_norm = (z - mu) / sqrt(var + eps)``, ``y = gamma z_norm + beta``; the variance
in two passes (never ``E[z^2] - E[z]^2``), the mean from offsets to a pivot sample.
"""
from __future__ import annotations

import math

from .. import _checks, parallel
from ..backend import common_array_module
from ..cuda import batchnorm as cuda_batchnorm
from .conv2d import _kernels


def _channel_sum(a2, channels):
    """Per-channel sum of ``a2``, an ``(N, C*L)`` view of ``(N, C, ...)``: column sums
    first (adding contiguous rows, which NumPy does fast), then one sum per channel."""
    return a2.sum(axis=0).reshape(channels, -1).sum(axis=1)


def _channel_dot(a2, b2, channels):
    """Per-channel sum of ``a2 * b2`` (both ``(N, C*L)``), without the product array."""
    xp = common_array_module(a2=a2, b2=b2)
    return xp.einsum("nl,nl->l", a2, b2).reshape(channels, -1).sum(axis=1)


def _expand(per_channel, sample_size):
    """``(C,)`` repeated to one sample's ``C*L`` values. Broadcast against ``(N, C*L)``
    it leaves NumPy inner loops a whole sample long; broadcasting ``(C, 1, 1)``
    against ``(N, C, H, W)`` loops over ``H*W`` values at a time, 2x slower."""
    xp = common_array_module(per_channel=per_channel)
    return xp.repeat(per_channel, sample_size // per_channel.shape[0])


_DEVICE_ROWS = None  # _row_chunks of a device array: all rows, no CPU threads


def _map_rows(task, chunks) -> list:
    """``task`` over the row chunks, on gpunet's CPU threads for NumPy (see
    :mod:`gpunet.parallel`); a device array's rows in one call, off CPU threads."""
    if chunks is _DEVICE_ROWS:
        return [task(slice(None))]
    return parallel.map_chunks(task, chunks)


def _row_chunks(x2):
    """Row slices of ``x2`` for gpunet's threads on NumPy; the statistics combine
    per-chunk channel sums, so any split gives the same values up to rounding."""
    if common_array_module(x2=x2).__name__ != "numpy":
        return _DEVICE_ROWS
    return parallel.batch_slices(x2.shape[0], x2.size)


def _batch_stats(x2, channels):
    """``(mean, biased var, x - mean)`` per channel of ``x2`` (``(N, C*L)``), in two
    passes.

    The mean is taken of offsets from one sample per channel: a float32 sum of
    values near 1e4 loses what a sum of their small offsets keeps.
    """
    xp = common_array_module(x2=x2)
    count = x2.size // channels
    pivot = x2[0].reshape(channels, -1)[:, 0]
    pivot_row = _expand(pivot, x2.shape[1])
    centred = xp.empty_like(x2)
    chunks = _row_chunks(x2)

    def centre(rows):
        xp.subtract(x2[rows], pivot_row, out=centred[rows])
        return _channel_sum(centred[rows], channels)

    offset = sum(_map_rows(centre, chunks)) / count
    offset_row = _expand(offset, x2.shape[1])

    def square(rows):
        centred[rows] -= offset_row
        return _channel_dot(centred[rows], centred[rows], channels)

    var = sum(_map_rows(square, chunks)) / count
    return pivot + offset, var, centred


def batch_norm_forward(x, weight, bias, running_mean, running_var, *, training,
                       momentum=0.1, eps=1e-5, use_kernels=None):
    """Normalise ``x``; returns ``(y, ctx)``.

    Training uses the batch's statistics (biased variance) and updates the
    running ones in place: ``running = (1 - momentum) running + momentum batch``,
    with the unbiased variance ``var * m / (m - 1)`` as in PyTorch. Evaluation
    uses the running statistics. CuPy arrays go to the CUDA kernels unless
    ``use_kernels=False`` or ``GPUNET_KERNELS=0``.
    """
    where = "batch_norm"
    xp = common_array_module(x=x, weight=weight, running_mean=running_mean)
    _checks.float_array(where, "x", x)
    _checks.same_dtype(where, x=x, weight=weight, bias=bias)
    channels = running_mean.shape[0]
    if x.ndim < 2 or x.shape[1] != channels:
        raise ValueError(
            f"{where}: x must be (N, {channels}, ...) with {channels} channels, "
            f"got shape {tuple(x.shape)}")
    kernels = _kernels(xp, use_kernels, cuda_batchnorm.fits(x.shape))
    count = x.size // channels
    if training and count < 2:
        raise ValueError(
            f"{where}: training needs more than one value per channel, got input "
            f"shape {tuple(x.shape)} (use a batch larger than 1 or call .eval())")
    x2 = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # (N, C*L): see _expand
    centred = None
    if training:
        if kernels:
            mean, var = cuda_batchnorm.stats(x)
        else:
            mean, var, centred = _batch_stats(x2, channels)
        running_mean *= 1.0 - momentum
        running_mean += momentum * mean.astype(running_mean.dtype)
        running_var *= 1.0 - momentum
        running_var += (momentum * count / (count - 1)) * var.astype(running_var.dtype)
    else:
        mean = running_mean.astype(x.dtype)
        var = running_var.astype(x.dtype)
    inv_std = 1.0 / xp.sqrt(var + eps)
    if kernels:
        y, x_hat = cuda_batchnorm.apply(x, mean, inv_std, weight, bias)
        return y, (x_hat, inv_std, weight, training, kernels)
    inv_std_row = _expand(inv_std, x2.shape[1])
    weight_row, bias_row = _expand(weight, x2.shape[1]), _expand(bias, x2.shape[1])
    # training centred x already; evaluation centres it here (x_hat is normalised in place)
    mean_row = _expand(mean, x2.shape[1]) if centred is None else None
    x_hat = centred if centred is not None else xp.empty_like(x2)
    y = xp.empty_like(x2)

    def normalise(rows):
        if mean_row is not None:
            xp.subtract(x2[rows], mean_row, out=x_hat[rows])
        x_hat[rows] *= inv_std_row
        xp.multiply(x_hat[rows], weight_row, out=y[rows])
        y[rows] += bias_row

    _map_rows(normalise, _row_chunks(x2))
    return y.reshape(x.shape), (x_hat.reshape(x.shape), inv_std, weight, training, kernels)


def batch_norm_backward(dy, ctx):
    """``(dx, dweight, dbias)``.

    In training the batch statistics depend on ``x``, which gives
    ``dx = inv_std / m * (m g - sum(g) - x_hat sum(g x_hat))`` with ``g = gamma dy``;
    in evaluation they are constants and ``dx = gamma dy inv_std``.
    """
    x_hat, inv_std, weight, training, kernels = ctx
    if dy.shape != x_hat.shape:
        raise ValueError(f"batch_norm backward: dy must have shape {tuple(x_hat.shape)}, "
                         f"got {tuple(dy.shape)}")
    if kernels:
        return cuda_batchnorm.backward(dy, x_hat, weight, inv_std, training)
    xp = common_array_module(dy=dy, x_hat=x_hat)
    channels, sample_size = dy.shape[1], dy.size // dy.shape[0]
    dy2, x_hat2 = dy.reshape(dy.shape[0], -1), x_hat.reshape(dy.shape[0], -1)
    chunks = _row_chunks(dy2)
    sums = _map_rows(lambda rows: (_channel_sum(dy2[rows], channels),
                                   _channel_dot(dy2[rows], x_hat2[rows], channels)), chunks)
    dbias, dweight = (sum(parts) for parts in zip(*sums))
    g_scale = weight * inv_std
    g_row = _expand(g_scale, sample_size)
    if training:  # the batch statistics' own gradients
        m = dy.size // channels
        x_hat_scale = _expand(g_scale * dweight / m, sample_size)
        shift = _expand(g_scale * dbias / m, sample_size)
    dx = xp.empty_like(dy2)

    def input_grad(rows):
        xp.multiply(dy2[rows], g_row, out=dx[rows])
        if training:
            dx[rows] -= x_hat2[rows] * x_hat_scale
            dx[rows] -= shift

    _map_rows(input_grad, chunks)
    return dx.reshape(dy.shape), dweight, dbias
