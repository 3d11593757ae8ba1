"""Fully connected layer: ``y = x @ W.T + b`` with ``W`` of shape ``(out, in)``."""
from __future__ import annotations

import numpy

from .. import _checks, parallel
from ..backend import common_array_module
from ..init import constant, initialize
from .module import Module, Parameter


def _matmul(a, b):
    """``a @ b``, over gpunet's CPU threads for NumPy arrays (gpunet.parallel)."""
    return parallel.matmul(a, b) if isinstance(a, numpy.ndarray) else a @ b


class Linear(Module):
    """``(..., in_features) -> (..., out_features)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init="he"):
        super().__init__()
        self.in_features = _checks.positive_int("in_features", in_features)
        self.out_features = _checks.positive_int("out_features", out_features)
        self.weight = Parameter(initialize(init, (out_features, in_features)))
        self.bias = Parameter(constant(out_features), decay=False) if bias else None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

    def forward(self, x):
        where = f"Linear({self.in_features}, {self.out_features})"
        _checks.float_array(where, "input", x)
        common_array_module(input=x, weight=self.weight.data)
        _checks.same_dtype(where, input=x, weight=self.weight.data)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"{where}: input must be (..., {self.in_features}), "
                             f"got shape {tuple(x.shape)}")
        y = _matmul(x.reshape(-1, self.in_features), self.weight.data.T)
        y = y.reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            y += self.bias.data
        self._ctx = x
        return y

    def backward(self, dy, input_grad: bool = True):
        x = self._saved()
        expected = (*x.shape[:-1], self.out_features)
        if tuple(dy.shape) != expected:
            raise ValueError(f"Linear.backward: dy must have shape {expected}, "
                             f"got {tuple(dy.shape)}")
        dy2 = dy.reshape(-1, self.out_features)
        self.weight.grad += _matmul(dy2.T, x.reshape(-1, self.in_features))
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0)
        if not input_grad:
            return None
        return _matmul(dy2, self.weight.data).reshape(x.shape)

    def backward_params_only(self, dy) -> None:
        self.backward(dy, input_grad=False)
