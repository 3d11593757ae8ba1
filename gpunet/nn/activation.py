"""Activations and ``Flatten``: no parameters, elementwise (or per-row) maps."""
from __future__ import annotations

import math

from .. import _checks
from ..backend import get_array_module
from ..ops import sigmoid, softmax
from .module import Module


class _Elementwise(Module):
    def _check(self, x):
        _checks.float_array(type(self).__name__, "input", x)

    def _check_dy(self, dy, like):
        _checks.shape(f"{type(self).__name__}.backward", "dy", dy, like.shape)


class ReLU(_Elementwise):
    """``y = max(x, 0)``; ``dx = dy * [x > 0]``."""

    def forward(self, x):
        self._check(x)
        self._ctx = positive = x > 0
        return x * positive

    def backward(self, dy):
        positive = self._saved()
        self._check_dy(dy, positive)
        return dy * positive


class LeakyReLU(_Elementwise):
    """``y = x`` for ``x > 0``, else ``slope * x``."""

    def __init__(self, slope: float = 0.01):
        super().__init__()
        self.slope = _checks.non_negative("slope", slope)

    def extra_repr(self) -> str:
        return f"slope={self.slope}"

    def forward(self, x):
        self._check(x)
        xp = get_array_module(x)
        self._ctx = factor = xp.where(x > 0, 1.0, self.slope).astype(x.dtype)
        return x * factor

    def backward(self, dy):
        factor = self._saved()
        self._check_dy(dy, factor)
        return dy * factor


class Tanh(_Elementwise):
    """``y = tanh(x)``; ``dx = dy (1 - y^2)``."""

    def forward(self, x):
        self._check(x)
        self._ctx = y = get_array_module(x).tanh(x)
        return y

    def backward(self, dy):
        y = self._saved()
        self._check_dy(dy, y)
        return dy * (1 - y * y)


class Sigmoid(_Elementwise):
    """``y = 1 / (1 + e^-x)``; ``dx = dy y (1 - y)``."""

    def forward(self, x):
        self._check(x)
        self._ctx = y = sigmoid(x)
        return y

    def backward(self, dy):
        y = self._saved()
        self._check_dy(dy, y)
        return dy * y * (1 - y)


class Softmax(_Elementwise):
    """``y = e^x / sum(e^x)`` along ``dim``; ``dx = y (dy - sum(dy y))``.

    For training a classifier use ``losses.SoftmaxCrossEntropy`` on the logits
    instead: it is fused and stable.
    """

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, x):
        self._check(x)
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(f"Softmax: dim {self.dim} is out of range for input of "
                             f"shape {tuple(x.shape)}")
        self._ctx = y = softmax(x, axis=self.dim)
        return y

    def backward(self, dy):
        y = self._saved()
        self._check_dy(dy, y)
        return y * (dy - (dy * y).sum(axis=self.dim, keepdims=True))


class Flatten(Module):
    """``(N, d1, d2, ...) -> (N, d1*d2*...)`` (from ``start_dim``, default 1)."""

    def __init__(self, start_dim: int = 1):
        super().__init__()
        self.start_dim = _checks.non_negative_int("start_dim", start_dim)

    def forward(self, x):
        if x.ndim <= self.start_dim:
            raise ValueError(f"Flatten: input needs more than {self.start_dim} axes, "
                             f"got shape {tuple(x.shape)}")
        self._ctx = x.shape
        # the size, not -1: an empty batch has no size to infer it from (PyTorch gives
        # (0, 400) for (0, 16, 5, 5))
        return x.reshape(*x.shape[:self.start_dim], math.prod(x.shape[self.start_dim:]))

    def backward(self, dy):
        return dy.reshape(self._saved())
