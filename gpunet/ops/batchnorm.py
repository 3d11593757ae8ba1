"""Batch normalisation over the channel axis 1 of ``(N, C)``, ``(N, C, L)`` or
``(N, C, H, W)``; statistics are per channel, over every other axis.

The notes' equations: ``mu = mean(z)``, ``var = mean((z - mu)^2)``,
``z_norm = (z - mu) / sqrt(var + eps)``, ``y = gamma z_norm + beta``. The variance
takes two passes (never ``E[z^2] - E[z]^2``), and the mean is taken of offsets
from one sample per channel: a float32 sum of values near 1e4 loses what a sum of
their small offsets keeps. NumPy arrays run :mod:`gpunet.cpu.batchnorm` (the same
passes in row chunks on gpunet's threads), CuPy arrays gpunet's CUDA kernels
(:mod:`gpunet.cuda.batchnorm`, ``kernels/batchnorm.cu``).
"""
from __future__ import annotations

import functools
import math

from .. import _checks
from .._context import BatchNormContext
from ..backend import common_array_module
from ..cpu import batchnorm as cpu_batchnorm
from ..cuda import batchnorm as cuda_batchnorm
from .common import route


class _Ranks:
    """Where the per-channel sums of the statistics come from: this process alone
    (``world`` ``None``: the sums are the batch's), or every rank of a distributed
    ``world`` (synchronised batch norm: each sum all-reduced). One formula serves
    both, so both keep the pivot shift."""

    def __init__(self, world=None):
        self.world = world

    @property
    def size(self) -> int:
        return 1 if self.world is None else self.world.size

    def sum(self, arrays):
        if self.world is None:
            return arrays
        arrays = [a.copy() for a in arrays]  # the callers' local sums stay local
        self.world.all_reduce(arrays)
        return arrays

    def count(self, values: int) -> int:
        return values if self.world is None else int(self.world.sum([values])[0])


ONE_PROCESS = _Ranks()


def _forward(x, weight, bias, running, eps, ranks=ONE_PROCESS):
    """``(y, ctx)``, normalised by the batch's statistics (``ctx.batch_stats``, the variance
    biased) when ``running`` is ``None``, else by ``running = (mean, var)``. The batch is every
    rank's of ``ranks``: ``offset = sum(x - pivot) / m``, ``mean = pivot + offset``, ``var =
    sum((x - pivot - offset)^2) / m``, each sum over all of them, the pivot one sample's value
    per channel (averaged over the ranks, so that they share it)."""
    xp = common_array_module(x=x)
    axes = (0, *range(2, x.ndim))
    per_channel = (1, -1) + (1,) * (x.ndim - 2)  # (C,) against (N, C, ...)
    if running is None:
        m = ranks.count(x.shape[0] * math.prod(x.shape[2:]))  # not size // C: C may be 0
        pivot, = ranks.sum([x[(slice(0, 1), slice(None)) + (0,) * (x.ndim - 2)].reshape(-1)])
        pivot = (pivot / ranks.size).reshape(per_channel)
        shifted = x - pivot
        offset, = ranks.sum([shifted.sum(axis=axes)])
        offset = offset.reshape(per_channel) / m
        mean = pivot + offset
        centred = shifted - offset  # not x - mean: mean, rounded near 1e4, is off by 5e-4
        var, = ranks.sum([(centred * centred).sum(axis=axes)])
        var = var.reshape(per_channel) / m
    else:
        mean, var = (a.astype(x.dtype).reshape(per_channel) for a in running)
        centred = x - mean
    inv_std = 1.0 / xp.sqrt(var + eps)
    x_hat = centred * inv_std
    y = weight.reshape(per_channel) * x_hat + bias.reshape(per_channel)
    stats = (mean.reshape(-1), var.reshape(-1)) if running is None else None
    return y, BatchNormContext(x_hat, inv_std.reshape(-1), weight, running is None,
                               functools.partial(_backward, ranks=ranks), stats)


def _backward(dy, x_hat, weight, inv_std, training, input_grad, ranks=ONE_PROCESS):
    """``(dx, dweight, dbias)``. In training the batch statistics depend on ``x``: ``dx =
    inv_std / m * (m g - sum(g) - x_hat sum(g x_hat))``, ``g = gamma dy``, ``m`` and the sums
    over every rank of ``ranks``; in evaluation ``dx = gamma dy inv_std``. ``dweight`` and
    ``dbias`` stay this rank's (averaged over the ranks, they are the batch's)."""
    axes = (0, *range(2, dy.ndim))
    per_channel = (1, -1) + (1,) * (dy.ndim - 2)
    dbias, dweight = dy.sum(axis=axes), (dy * x_hat).sum(axis=axes)
    if not input_grad:
        return None, dweight, dbias
    g_scale = (weight * inv_std).reshape(per_channel)
    dx = g_scale * dy
    if training:  # the batch statistics' own gradients
        m = ranks.count(dy.shape[0] * math.prod(dy.shape[2:]))
        batch_dweight, batch_dbias = ranks.sum([dweight, dbias])
        dx -= g_scale * (x_hat * batch_dweight.reshape(per_channel)
                         + batch_dbias.reshape(per_channel)) / m
    return dx, dweight, dbias


# the forward of each implementation (see route): (y, BatchNormContext)
IMPLEMENTATIONS = {"xp": _forward, "cpu": cpu_batchnorm.forward, "cuda": cuda_batchnorm.forward}


def batch_norm_forward(x, weight, bias, running_mean, running_var, *, training,
                       momentum=0.1, eps=1e-5, use_kernels=None, world=None):
    """Normalise ``x``; returns ``(y, ctx)``, ``ctx.backward(dy)`` giving ``(dx,
    dweight, dbias)``.

    Training uses the batch's statistics (biased variance) and updates the
    running ones in place: ``running = (1 - momentum) running + momentum batch``,
    with the unbiased variance ``var * m / (m - 1)`` as in PyTorch. Evaluation
    uses the running statistics. CuPy arrays go to the CUDA kernels unless
    ``use_kernels=False`` or ``GPUNET_KERNELS=0``. In training, a distributed
    ``world`` (:mod:`gpunet.distributed`) makes the statistics those of every
    rank's batch together (on the textbook path).
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
    count = x.shape[0] * math.prod(x.shape[2:])  # values per channel (C may be 0)
    if training and count < 2:
        raise ValueError(
            f"{where}: training needs more than one value per channel, got input "
            f"shape {tuple(x.shape)} (use a batch larger than 1 or call .eval())")
    if training and world is not None:
        ranks = _Ranks(world)
        count = ranks.count(count)
        forward = functools.partial(_forward, ranks=ranks)
    else:
        implementation = route(xp, use_kernels, cuda_batchnorm.fits(x.shape))
        forward = IMPLEMENTATIONS[implementation]
        if training and implementation == "cuda" and \
                cuda_batchnorm.updates_running(x, running_mean, running_var):
            # the kernels update the running statistics too: three launches in all
            return cuda_batchnorm.train_forward(x, weight, bias, running_mean, running_var,
                                                momentum, eps)
    y, ctx = forward(x, weight, bias, None if training else (running_mean, running_var), eps)
    if training:
        mean, var = ctx.batch_stats
        running_mean *= 1.0 - momentum
        running_mean += momentum * mean.astype(running_mean.dtype)
        running_var *= 1.0 - momentum
        running_var += (momentum * count / (count - 1)) * var.astype(running_var.dtype)
    return y, ctx
