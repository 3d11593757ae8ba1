"""Inverted dropout: ``y = x * mask / keep_prob`` in training, identity in eval."""
from __future__ import annotations

from .. import _checks, distributed
from ..backend import generator, get_array_module
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
        xp = get_array_module(x)
        shard = distributed.current_shard()
        if shard is not None and x.shape[0] == shard[1] - shard[0]:
            # a distributed step: the global batch's mask, and this rank's rows of it,
            # so that p processes drop what one process would
            start, stop, rows = shard
            keep = generator(xp).random((rows, *x.shape[1:]), dtype=x.dtype)[start:stop] >= self.p
        else:
            keep = generator(xp).random(x.shape, dtype=x.dtype) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        self._ctx = mask = keep.astype(x.dtype) * x.dtype.type(scale)
        return x * mask

    def backward(self, dy):
        return dy * self._saved()
