"""Inverted dropout: ``y = x * mask / keep_prob`` in training, identity in eval."""
from __future__ import annotations

from .. import _checks
from ..backend import batch_uniform, get_array_module
from .module import Module


class Dropout(Module):
    """Zero each element with probability ``p`` and scale the survivors by
    ``1 / (1 - p)``, so the expected activation is unchanged and nothing needs
    rescaling at test time."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = _checks.probability("p", p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x):
        _checks.float_array("Dropout", "input", x)
        if not self.training or self.p == 0.0:
            self._ctx = 1.0
            return x
        # in a distributed step, this rank's rows of the global batch's mask: p processes
        # drop what one process would
        keep = batch_uniform(get_array_module(x), x.shape, x.dtype) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        self._ctx = mask = keep.astype(x.dtype) * x.dtype.type(scale)
        return x * mask

    def backward(self, dy):
        return dy * self._saved()
