"""Max and average pooling: no parameters, but they do shape the gradient."""
from __future__ import annotations

from .. import _checks
from ..ops import adaptive_avg_pool2d_forward, avg_pool2d_forward, max_pool2d_forward
from .module import Module


class _Pool2d(Module):
    _forward = None

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
        dx, = self._saved().backward(dy)
        return dx


class MaxPool2d(_Pool2d):
    """Maximum of each window; backward routes to the first maximum of each window."""

    _forward = staticmethod(max_pool2d_forward)


class AvgPool2d(_Pool2d):
    """Mean of each window, padding counted as zeros (PyTorch's default)."""

    _forward = staticmethod(avg_pool2d_forward)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed ``output_size``, whatever the input size.

    Each output row averages a band of input rows and each column a band of
    columns, so ``y = A_h x A_w^T`` and ``dx = A_h^T dy A_w``.
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = _checks.pair("output_size", output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"

    def forward(self, x):
        y, self._ctx = adaptive_avg_pool2d_forward(x, self.output_size)
        return y

    def backward(self, dy):
        dx, = self._saved().backward(dy)
        return dx
