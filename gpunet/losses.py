"""Losses: ``loss = L.forward(outputs, targets)`` is a Python float and
``L.backward()`` the gradient w.r.t. ``outputs``, already divided by the batch.
"""
from __future__ import annotations

from . import _checks
from .backend import common_array_module
from .ops import log_softmax, sigmoid

__all__ = ["Loss", "SoftmaxCrossEntropy", "BinaryCrossEntropy", "MSELoss"]


class Loss:
    """Base class: subclasses implement ``forward`` (saving ``self._ctx``) and ``backward``."""

    _ctx = None

    def __call__(self, outputs, targets) -> float:
        return self.forward(outputs, targets)

    def _saved(self):
        if self._ctx is None:
            raise RuntimeError(f"{type(self).__name__}.backward was called before forward")
        return self._ctx

    def _check_outputs(self, outputs, targets, name="outputs"):
        where = type(self).__name__
        xp = common_array_module(**{name: outputs, "targets": targets})
        _checks.float_array(where, name, outputs)
        if outputs.ndim == 0 or outputs.shape[0] == 0:
            raise ValueError(f"{where}: {name} must be a non-empty batch (N, ...), "
                             f"got shape {tuple(outputs.shape)}")
        if getattr(targets, "ndim", 0) == 0 or targets.shape[0] != outputs.shape[0]:
            raise ValueError(
                f"{where}: batch sizes differ: {name} has shape {tuple(outputs.shape)}, "
                f"targets has shape {tuple(getattr(targets, 'shape', ()))}")
        if not bool(xp.isfinite(outputs).all()):
            first = tuple(int(i) for i in xp.argwhere(~xp.isfinite(outputs))[0])
            raise ValueError(f"{where}: {name} contain NaN or Inf (first at index {first}, "
                             f"value {outputs[first]})")
        return xp


class SoftmaxCrossEntropy(Loss):
    """Softmax followed by cross-entropy, fused: ``L = -sum_j y_j log softmax(z)_j``,
    averaged over the batch, computed with log-sum-exp so no ``exp`` overflows.

    ``targets``: integer labels ``(N,)`` or probabilities / one-hot ``(N, C)``.
    ``backward() = (softmax(z) - y) / N``.
    """

    def forward(self, logits, targets) -> float:
        where = "SoftmaxCrossEntropy"
        xp = self._check_outputs(logits, targets, "logits")
        _checks.rank(where, "logits", logits, 2, "(N, C)")
        n, classes = logits.shape
        log_p = log_softmax(logits, axis=1)
        if targets.dtype.kind in "iu":
            _checks.rank(where, "targets (integer labels)", targets, 1, "(N,)")
            low, high = int(targets.min()), int(targets.max())
            if low < 0 or high >= classes:
                bad = low if low < 0 else high
                raise ValueError(f"{where}: label {bad} is out of range for {classes} "
                                 f"classes (expected 0..{classes - 1})")
            loss = -log_p[xp.arange(n), targets].sum() / n
        elif targets.dtype.kind == "f":
            if targets.shape != logits.shape:
                raise ValueError(f"{where}: probability targets must have the logits' shape "
                                 f"{tuple(logits.shape)}, got {tuple(targets.shape)}")
            loss = -(targets * log_p).sum() / n
        else:
            raise TypeError(f"{where}: targets must be integer labels or float "
                            f"probabilities, got dtype {targets.dtype.name}")
        self._ctx = (xp.exp(log_p), targets)
        return float(loss)

    def backward(self):
        probs, targets = self._saved()
        n = probs.shape[0]
        grad = probs.copy()
        if targets.dtype.kind in "iu":
            grad[common_array_module(probs=probs).arange(n), targets] -= 1
        else:
            grad -= targets
        return grad / n


class BinaryCrossEntropy(Loss):
    """Sigmoid + binary cross-entropy on logits, averaged over all elements:
    ``L = mean(max(z, 0) - z y + log(1 + e^-|z|))``; ``backward = (sigmoid(z) - y) / size``.
    """

    def forward(self, logits, targets) -> float:
        xp = self._check_outputs(logits, targets, "logits")
        _check_same_shape("BinaryCrossEntropy", logits, targets)
        y = targets.astype(logits.dtype)
        losses = xp.maximum(logits, 0) - logits * y + xp.log1p(xp.exp(-xp.abs(logits)))
        self._ctx = (logits, y)
        return float(losses.mean())

    def backward(self):
        logits, y = self._saved()
        return (sigmoid(logits) - y) / logits.size


class MSELoss(Loss):
    """``L = mean((outputs - targets)^2)`` over all elements; ``backward = 2 (o - t) / size``."""

    def forward(self, outputs, targets) -> float:
        self._check_outputs(outputs, targets)
        _check_same_shape("MSELoss", outputs, targets)
        diff = outputs - targets.astype(outputs.dtype)
        self._ctx = diff
        return float((diff * diff).mean())

    def backward(self):
        diff = self._saved()
        return 2.0 * diff / diff.size


def _check_same_shape(where, outputs, targets):
    if targets.shape != outputs.shape:
        raise ValueError(f"{where}: targets must have the outputs' shape "
                         f"{tuple(outputs.shape)}, got {tuple(targets.shape)}")
    if targets.dtype.kind not in "biuf":
        raise TypeError(f"{where}: targets must be numeric, got dtype {targets.dtype.name}")
