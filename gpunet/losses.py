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
    """Softmax followed by cross-entropy, fused, as ``torch.nn.CrossEntropyLoss``:
    ``L_n = -sum_c a_nc log softmax(z_n)_c``, computed with log-sum-exp so no ``exp``
    overflows.

    ``targets``: integer labels ``(N,)`` or probabilities / one-hot ``(N, C)``.
    With labels ``y_n`` the coefficients are ``a_nc = w_yn (1 - s) [c = y_n] +
    s w_c / C`` (``w`` = ``weight``, ones by default; ``s`` = ``label_smoothing``),
    and 0 for rows whose label is ``ignore_index``; with probabilities ``p_nc``,
    ``a_nc = w_c ((1 - s) p_nc + s / C)``. ``reduction``: ``"mean"`` divides the sum
    by the summed ``w_yn`` of the rows not ignored (by ``N`` for probabilities; NaN
    when every row is ignored, as PyTorch), ``"sum"`` does not divide, ``"none"``
    returns the ``(N,)`` losses. ``backward()`` is ``(softmax(z) sum_c a_nc - a_n) / D``
    (``D`` the divisor), ``(softmax(z) - y) / N`` in the plain case; after
    ``reduction="none"`` it takes the gradient of the ``(N,)`` losses.
    """

    REDUCTIONS = ("mean", "sum", "none")

    def __init__(self, weight=None, ignore_index: int = -100, label_smoothing: float = 0.0,
                 reduction: str = "mean"):
        if weight is not None:
            _checks.float_array("SoftmaxCrossEntropy", "weight", weight)
            _checks.rank("SoftmaxCrossEntropy", "weight", weight, 1, "(C,)")
        self.weight = weight
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index: expected an int, got {ignore_index!r}")
        self.ignore_index = ignore_index
        if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing <= 1):
            raise ValueError(f"label_smoothing: expected a number in [0, 1], got "
                             f"{label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        if reduction not in self.REDUCTIONS:
            raise ValueError(f"reduction: expected one of {self.REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, logits, targets):
        """A Python float, or the ``(N,)`` losses with ``reduction="none"``."""
        where = "SoftmaxCrossEntropy"
        xp = self._check_outputs(logits, targets, "logits")
        _checks.rank(where, "logits", logits, 2, "(N, C)")
        n, classes = logits.shape
        w = xp.ones(classes, logits.dtype) if self.weight is None else \
            xp.asarray(self.weight, dtype=logits.dtype)
        if w.shape != (classes,):
            raise ValueError(f"{where}: weight must have one entry per class ({classes}), "
                             f"got shape {tuple(w.shape)}")
        s = self.label_smoothing
        log_p = log_softmax(logits, axis=1)
        if targets.dtype.kind in "iu":
            _checks.rank(where, "targets (integer labels)", targets, 1, "(N,)")
            kept = targets != self.ignore_index
            labels = xp.where(kept, targets, 0)
            if bool(kept.any()):
                low, high = int(targets[kept].min()), int(targets[kept].max())
                if low < 0 or high >= classes:
                    bad = low if low < 0 else high
                    raise ValueError(f"{where}: label {bad} is out of range for {classes} "
                                     f"classes (expected 0..{classes - 1}, or ignore_index "
                                     f"{self.ignore_index})")
            w_label = w[labels] * kept
            coef = (s / classes) * w[None, :] * kept[:, None]
            coef[xp.arange(n), labels] += (1.0 - s) * w_label
            divisor = w_label.sum()
        elif targets.dtype.kind == "f":
            if targets.shape != logits.shape:
                raise ValueError(f"{where}: probability targets must have the logits' shape "
                                 f"{tuple(logits.shape)}, got {tuple(targets.shape)}")
            coef = w[None, :] * ((1.0 - s) * targets.astype(logits.dtype) + s / classes)
            divisor = n
        else:
            raise TypeError(f"{where}: targets must be integer labels or float "
                            f"probabilities, got dtype {targets.dtype.name}")
        losses = -(coef * log_p).sum(axis=1)
        if self.reduction == "none":
            self._ctx = (xp.exp(log_p), coef, None)
            return losses
        if self.reduction == "sum":
            divisor = 1
        self._ctx = (xp.exp(log_p), coef, divisor)
        total = losses.sum()
        return float(total / divisor) if float(divisor) != 0 else float("nan")

    def backward(self, dloss=None):
        """The gradient w.r.t. the logits; ``dloss``, the gradient of the ``(N,)``
        losses, is needed after ``reduction="none"`` only."""
        probs, coef, divisor = self._saved()
        grad = probs * coef.sum(axis=1, keepdims=True) - coef
        if divisor is None:
            if dloss is None:
                raise ValueError("SoftmaxCrossEntropy.backward: reduction='none' needs "
                                 "dloss, the gradient of the (N,) losses")
            _checks.shape("SoftmaxCrossEntropy.backward", "dloss", dloss, probs.shape[:1])
            return grad * dloss[:, None]
        return grad / divisor if float(divisor) != 0 else grad * float("nan")


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
