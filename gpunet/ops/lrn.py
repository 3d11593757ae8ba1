"""Local response normalisation across channels (AlexNet, 2012), as PyTorch:

``y_c = x_c / s_c^beta``, ``s_c = k + alpha/size * sum_{j in win(c)} x_j^2``,
``win(c) = [c - size//2, c + (size-1)//2]`` clipped to the channels.
"""
from __future__ import annotations

from .. import _checks
from .._context import Context
from ..backend import common_array_module


def _window_sum(a, before, after):
    """``out[:, c] = sum(a[:, c-before : c+after+1])`` over axis 1, clipped at the ends."""
    xp = common_array_module(a=a)
    channels = a.shape[1]
    out = xp.zeros_like(a)
    for offset in range(-before, after + 1):
        lo, hi = max(0, -offset), min(channels, channels - offset)
        out[:, lo:hi] += a[:, lo + offset:hi + offset]
    return out


def lrn_forward(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Returns ``(y, ctx)`` for ``x`` of shape ``(N, C, ...)``; ``ctx.backward(dy)``
    gives ``(dx,)``."""
    _checks.float_array("local_response_norm", "x", x)
    if x.ndim < 3:
        raise ValueError("local_response_norm: x must be at least 3-D (N, C, ...), "
                         f"got shape {tuple(x.shape)}")
    scale = k + (alpha / size) * _window_sum(x * x, size // 2, (size - 1) // 2)
    y = x * scale ** -beta
    return y, LRNContext(x, scale, size, alpha, beta)


class LRNContext(Context):
    __slots__ = ("x", "scale", "size", "alpha", "beta")

    def __init__(self, x, scale, size, alpha, beta):
        super().__init__("local_response_norm", x.shape)
        self.x, self.scale, self.size, self.alpha, self.beta = x, scale, size, alpha, beta

    def _backward(self, dy, input_grad):
        """``dx_i = dy_i s_i^-beta - 2 alpha beta / size * x_i * sum_{c: i in win(c)}
        dy_c x_c s_c^(-beta-1)``; the transposed window swaps ``before`` and ``after``."""
        x, scale, size, alpha, beta = self.x, self.scale, self.size, self.alpha, self.beta
        through = dy * x * scale ** (-beta - 1)
        spread = _window_sum(through, (size - 1) // 2, size // 2)
        return (dy * scale ** -beta - (2 * alpha * beta / size) * x * spread,)
