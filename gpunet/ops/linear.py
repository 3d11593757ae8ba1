"""The fully connected map ``y = x W^T + b``, ``W`` of shape ``(out, in)``, over the
last axis of ``x``. Its backward: ``dW = dy^T x``, ``db = sum dy``, ``dx = dy W``.
NumPy arrays run the GEMMs over gpunet's CPU threads (:func:`gpunet.cpu.parallel.matmul`);
CuPy's ``matmul`` is cuBLAS, which gpunet does not try to beat.
"""
from __future__ import annotations

from .. import _checks
from .._context import Context
from ..backend import common_array_module
from ..cpu import parallel as cpu_parallel
from .common import route


def _matmul(xp, a, b):
    return cpu_parallel.matmul(a, b) if route(xp) == "cpu" else a @ b


class LinearContext(Context):
    __slots__ = ("x", "weight", "has_bias")

    def __init__(self, x, weight, has_bias):
        super().__init__("linear", (*x.shape[:-1], weight.shape[0]))
        self.x, self.weight, self.has_bias = x, weight, has_bias

    def _backward(self, dy, input_grad):
        xp = common_array_module(dy=dy, weight=self.weight)
        out_features, in_features = self.weight.shape
        dy2 = dy.reshape(-1, out_features)
        dweight = _matmul(xp, dy2.T, self.x.reshape(-1, in_features))
        dbias = dy2.sum(axis=0) if self.has_bias else None
        if not input_grad:
            return None, dweight, dbias
        return _matmul(xp, dy2, self.weight).reshape(self.x.shape), dweight, dbias


def linear_forward(x, weight, bias=None, *, where=None, x_name="x"):
    """``(y, ctx)`` for ``x`` of shape ``(..., in)``; ``ctx.backward(dy)`` gives
    ``(dx, dweight, dbias)``. Every argument is checked here, once: ``where`` (by
    default ``linear(in -> out)``) and ``x_name`` name the caller and ``x`` in the error
    messages (``Linear`` passes its repr and ``"input"``)."""
    if where is None:
        where = f"linear({weight.shape[1]} -> {weight.shape[0]})"
    _checks.float_array(where, x_name, x)
    xp = common_array_module(x=x, weight=weight, bias=bias)
    _checks.same_dtype(where, **{x_name: x}, weight=weight, bias=bias)
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{where}: {x_name} must be (..., {weight.shape[1]}), "
                         f"got shape {tuple(x.shape)}")
    y = _matmul(xp, x.reshape(-1, weight.shape[1]), weight.T)
    y = y.reshape(*x.shape[:-1], weight.shape[0])
    if bias is not None:
        y += bias
    return y, LinearContext(x, weight, bias is not None)
