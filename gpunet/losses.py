"""Losses: ``loss = L.forward(outputs, targets)`` is a Python float and
``L.backward()`` the gradient w.r.t. ``outputs``, already divided by the batch.
"""
from __future__ import annotations

from . import _checks
from .backend import common_array_module, get_array_module
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

    def _check_shapes(self, outputs, targets, name="outputs"):
        """The array module of ``outputs`` (a non-empty float batch) and ``targets``
        (as many rows); their values are :meth:`_check_values`' part."""
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
        return xp

    def _check_values(self, xp, outputs, name, targets_ok=None, targets_problem=None):
        """``outputs`` must be finite and ``targets_ok`` (a 0-d device bool, one
        reduction over the targets) true. Both are read in one host transfer, the one
        the check of the outputs alone took, so that a CuPy step waits no more often;
        ``targets_problem()`` writes the message, only once something is wrong."""
        finite = xp.isfinite(outputs).all()
        if bool(finite if targets_ok is None else finite & targets_ok):
            return
        where = type(self).__name__
        if not bool(finite):
            index, value = _first(xp, ~xp.isfinite(outputs), outputs)
            raise ValueError(f"{where}: {name} contain NaN or Inf (first at index {index}, "
                             f"value {value})")
        raise ValueError(f"{where}: {targets_problem()}")

    def _check_finite_targets(self, xp, outputs, targets, name="outputs"):
        """Float targets must be finite (integer and bool ones cannot be NaN)."""
        if targets.dtype.kind != "f":
            return self._check_values(xp, outputs, name)
        self._check_values(xp, outputs, name, xp.isfinite(targets).all(),
                           lambda: "targets contain NaN or Inf (first at index {}, value {})"
                           .format(*_first(xp, ~xp.isfinite(targets), targets)))


class SoftmaxCrossEntropy(Loss):
    """Softmax followed by cross-entropy, fused, as ``torch.nn.CrossEntropyLoss``:
    ``L_n = -sum_c a_nc log softmax(z_n)_c``, computed with log-sum-exp so no ``exp``
    overflows.

    ``targets``: integer labels ``(N,)`` or probabilities / one-hot ``(N, C)``.
    With labels ``y_n`` the coefficients are ``a_nc = w_yn (1 - s) [c = y_n] +
    s w_c / C`` (``w`` = ``weight``, ones by default; ``s`` = ``label_smoothing``),
    and 0 for rows whose label is ``ignore_index``; with probabilities ``p_nc``,
    ``a_nc = w_c ((1 - s) p_nc + s / C)``. ``reduction``: ``"mean"`` divides the sum
    by the summed ``w_yn`` of the rows not ignored (by ``N`` for probabilities; when
    that sum is 0, as when every row is ignored, the loss is NaN and so is the gradient
    of the rows kept, while the rows ignored get 0, as PyTorch), ``"sum"`` does not
    divide, ``"none"``
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
        xp = self._check_shapes(logits, targets, "logits")
        _checks.rank(where, "logits", logits, 2, "(N, C)")
        n, classes = logits.shape
        w = xp.ones(classes, logits.dtype) if self.weight is None else \
            xp.asarray(self.weight, dtype=logits.dtype)
        if w.shape != (classes,):
            raise ValueError(f"{where}: weight must have one entry per class ({classes}), "
                             f"got shape {tuple(w.shape)}")
        s = self.label_smoothing
        kept = None
        if targets.dtype.kind in "iu":
            _checks.rank(where, "targets (integer labels)", targets, 1, "(N,)")
            kept = targets != self.ignore_index
            in_range = (targets >= 0) & (targets < classes)
            self._check_values(xp, logits, "logits", (in_range | ~kept).all(),
                               lambda: self._label_problem(targets, kept, classes))
            labels = xp.where(kept, targets, 0)
            log_p = log_softmax(logits, axis=1)
            w_label = w[labels] * kept
            coef = (s / classes) * w[None, :] * kept[:, None]
            coef[xp.arange(n), labels] += (1.0 - s) * w_label
            divisor = w_label.sum()
        elif targets.dtype.kind == "f":
            if targets.shape != logits.shape:
                raise ValueError(f"{where}: probability targets must have the logits' shape "
                                 f"{tuple(logits.shape)}, got {tuple(targets.shape)}")
            self._check_finite_targets(xp, logits, targets, "logits")
            log_p = log_softmax(logits, axis=1)
            coef = w[None, :] * ((1.0 - s) * targets.astype(logits.dtype) + s / classes)
            divisor = n
        else:
            raise TypeError(f"{where}: targets must be integer labels or float "
                            f"probabilities, got dtype {targets.dtype.name}")
        losses = -(coef * log_p).sum(axis=1)
        if self.reduction == "none":
            self._ctx = (xp.exp(log_p), coef, None, kept)
            return losses
        # a Python float, read once here so that backward need not wait for the device
        divisor = 1.0 if self.reduction == "sum" else float(divisor)
        self._ctx = (xp.exp(log_p), coef, divisor, kept)
        total = float(losses.sum())
        return total / divisor if divisor != 0 else float("nan")

    def _label_problem(self, targets, kept, classes) -> str:
        low, high = int(targets[kept].min()), int(targets[kept].max())
        return (f"label {low if low < 0 else high} is out of range for {classes} classes "
                f"(expected 0..{classes - 1}, or ignore_index {self.ignore_index})")

    def backward(self, dloss=None):
        """The gradient w.r.t. the logits; ``dloss``, the gradient of the ``(N,)``
        losses, is needed after ``reduction="none"`` only."""
        probs, coef, divisor, kept = self._saved()
        grad = probs * coef.sum(axis=1, keepdims=True) - coef
        if divisor is None:
            if dloss is None:
                raise ValueError("SoftmaxCrossEntropy.backward: reduction='none' needs "
                                 "dloss, the gradient of the (N,) losses")
            _checks.shape("SoftmaxCrossEntropy.backward", "dloss", dloss, probs.shape[:1])
            return grad * dloss[:, None]
        if divisor != 0:
            return grad / divisor
        # "mean" over rows of zero total weight: PyTorch's 0/0 (NaN) on the rows kept,
        # and no gradient (0, already in grad) on the rows ignored
        return get_array_module(grad).where(kept[:, None], grad * float("nan"), grad)


class BinaryCrossEntropy(Loss):
    """Sigmoid + binary cross-entropy on logits, averaged over all elements:
    ``L = mean(max(z, 0) - z y + log(1 + e^-|z|))``; ``backward = (sigmoid(z) - y) / size``.
    Targets ``y``, of the logits' shape, are probabilities in [0, 1] (bools, 0/1 or soft).
    """

    def forward(self, logits, targets) -> float:
        xp = self._check_shapes(logits, targets, "logits")
        _check_same_shape("BinaryCrossEntropy", logits, targets)
        if targets.dtype.kind == "b":
            self._check_values(xp, logits, "logits")
        else:
            in_unit = (targets >= 0) & (targets <= 1)  # False for NaN too
            self._check_values(xp, logits, "logits", in_unit.all(),
                               lambda: "targets must be in [0, 1], got {1} at index {0}"
                               .format(*_first(xp, ~in_unit, targets)))
        y = targets.astype(logits.dtype)
        losses = xp.maximum(logits, 0) - logits * y + xp.log1p(xp.exp(-xp.abs(logits)))
        self._ctx = (logits, y)
        return float(losses.mean())

    def backward(self):
        logits, y = self._saved()
        return (sigmoid(logits) - y) / logits.size


class MSELoss(Loss):
    """``L = mean((outputs - targets)^2)`` over all elements, targets finite;
    ``backward = 2 (o - t) / size``."""

    def forward(self, outputs, targets) -> float:
        xp = self._check_shapes(outputs, targets)
        _check_same_shape("MSELoss", outputs, targets)
        self._check_finite_targets(xp, outputs, targets)
        diff = outputs - targets.astype(outputs.dtype)
        self._ctx = diff
        return float((diff * diff).mean())

    def backward(self):
        diff = self._saved()
        return 2.0 * diff / diff.size


def _first(xp, bad, values):
    """The index (a tuple) of the first true element of ``bad``, and the value there."""
    index = tuple(int(i) for i in xp.argwhere(bad)[0])
    return index, values[index].item()


def _check_same_shape(where, outputs, targets):
    if targets.shape != outputs.shape:
        raise ValueError(f"{where}: targets must have the outputs' shape "
                         f"{tuple(outputs.shape)}, got {tuple(targets.shape)}")
    if targets.dtype.kind not in "biuf":
        raise TypeError(f"{where}: targets must be numeric, got dtype {targets.dtype.name}")
