"""Numerically stable elementwise and softmax functions, shared by layers and losses."""
from __future__ import annotations

from ..backend import get_array_module


def sigmoid(z):
    """``1 / (1 + e^-z)`` without overflow: ``e^-|z|`` is at most 1."""
    xp = get_array_module(z)
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def log_softmax(z, axis=-1):
    """``z - logsumexp(z)``, shifting by the max so no ``exp`` overflows."""
    xp = get_array_module(z)
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(z, axis=-1):
    """``e^z / sum(e^z)`` along ``axis``, computed as ``e^(z - max z)``."""
    xp = get_array_module(z)
    e = xp.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
