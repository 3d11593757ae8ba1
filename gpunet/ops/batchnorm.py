"""Batch normalisation over the channel axis 1 of ``(N, C)``, ``(N, C, L)`` or
``(N, C, H, W)``; statistics are per channel, over every other axis.

The notes' equations: ``mu = mean(z)``, ``var = mean((z - mu)^2)``,
``z_norm = (z - mu) / sqrt(var + eps)``, ``y = gamma z_norm + beta``; the variance
in two passes (never ``E[z^2] - E[z]^2``), the mean from offsets to a pivot sample.
"""
from __future__ import annotations

from .. import _checks
from ..backend import common_array_module
from ..cuda import batchnorm as cuda_batchnorm
from .conv import _kernels


def _reduce_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(a, ndim):
    """``(C,)`` broadcastable against an ``ndim``-D ``(N, C, ...)`` array."""
    return a.reshape((1, -1) + (1,) * (ndim - 2))


def _batch_stats(x, axes):
    """``(mean, biased var, x - mean)`` per channel, in two passes.

    The mean is taken of offsets from one sample per channel: a float32 sum of
    values near 1e4 loses what a sum of their small offsets keeps.
    """
    pivot = x[(0, slice(None)) + (0,) * (x.ndim - 2)]
    shifted = x - _per_channel(pivot, x.ndim)
    offset = shifted.mean(axis=axes)
    centred = shifted - _per_channel(offset, x.ndim)
    return pivot + offset, (centred * centred).mean(axis=axes), centred


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
    kernels = _kernels(xp, use_kernels)
    axes = _reduce_axes(x)
    count = x.size // channels
    centred = None
    if training:
        if count < 2:
            raise ValueError(
                f"{where}: training needs more than one value per channel, got input "
                f"shape {tuple(x.shape)} (use a batch larger than 1 or call .eval())")
        if kernels:
            mean, var = cuda_batchnorm.stats(x)
        else:
            mean, var, centred = _batch_stats(x, axes)
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
    else:
        if centred is None:
            centred = x - _per_channel(mean, x.ndim)
        x_hat = centred * _per_channel(inv_std, x.ndim)
        y = x_hat * _per_channel(weight, x.ndim) + _per_channel(bias, x.ndim)
    return y, (x_hat, inv_std, weight, training, kernels)


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
    axes, ndim = _reduce_axes(dy), dy.ndim
    dbias = dy.sum(axis=axes)
    dweight = (dy * x_hat).sum(axis=axes)
    g_scale = _per_channel(weight * inv_std, ndim)
    if not training:
        return dy * g_scale, dweight, dbias
    m = dy.size // dbias.shape[0]
    dx = g_scale * (dy - _per_channel(dbias / m, ndim) - x_hat * _per_channel(dweight / m, ndim))
    return dx, dweight, dbias
