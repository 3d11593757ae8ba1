"""Fully connected layer: ``y = x @ W.T + b`` with ``W`` of shape ``(out, in)``."""
from __future__ import annotations

from .. import _checks
from ..init import constant, initialize
from ..ops import linear_forward
from .module import Module, Parameter


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
        bias = None if self.bias is None else self.bias.data
        y, self._ctx = linear_forward(x, self.weight.data, bias, x_name="input",
                                      where=f"Linear({self.in_features}, {self.out_features})")
        return y

    def backward(self, dy, input_grad: bool = True):
        return self._add_grads(self._saved().backward(dy, input_grad), self.weight, self.bias)
