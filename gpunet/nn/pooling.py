"""Max and average pooling: no parameters, but they do shape the gradient."""
from __future__ import annotations

from .. import _checks
from ..ops import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward
from .module import Module


class _Pool2d(Module):
    _forward = _backward = None

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _checks.pair("kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else _checks.pair("stride", stride)
        self.padding = _checks.pair("padding", padding, _checks.non_negative_int)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x):
        y, self._ctx = type(self)._forward(x, self.kernel_size, self.stride, self.padding)
        return y

    def backward(self, dy):
        return type(self)._backward(dy, self._saved())


class MaxPool2d(_Pool2d):
    """Maximum of each window; backward routes to the first maximum of each window."""

    _forward, _backward = staticmethod(max_pool2d_forward), staticmethod(max_pool2d_backward)


class AvgPool2d(_Pool2d):
    """Mean of each window, padding counted as zeros (PyTorch's default)."""

    _forward, _backward = staticmethod(avg_pool2d_forward), staticmethod(avg_pool2d_backward)
