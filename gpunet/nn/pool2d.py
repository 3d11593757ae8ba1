"""Max and average pooling: no parameters, but they do shape the gradient."""
from __future__ import annotations

from .. import _checks
from ..ops import adaptive_avg_pool2d_forward, avg_pool2d_forward, max_pool2d_forward
from .module import Module


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        self.kernel_size = _checks.pair("kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else _checks.pair("stride", stride)
        self.padding = _checks.pair("padding", padding, _checks.non_negative_int)
        self.ceil_mode = _checks.boolean("ceil_mode", ceil_mode)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")

    def backward(self, dy):
        dx, = self._saved().backward(dy)
        return dx


class MaxPool2d(_Pool2d):
    """Maximum of each window; backward routes to the first maximum of each window.

    ``ceil_mode=True`` rounds the output size up, as PyTorch: windows may overhang
    the bottom/right, but each starts inside the input or its left/top padding.
    ``ceil_mode`` is keyword-only: PyTorch's fourth positional is ``dilation``.
    """

    def __init__(self, kernel_size, stride=None, padding=0, *, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, ceil_mode)

    def forward(self, x):
        y, self._ctx = max_pool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                          ceil_mode=self.ceil_mode)
        return y


class AvgPool2d(_Pool2d):
    """Mean of each window: ``y = sum / divisor``. The divisor counts padded zeros
    with ``count_include_pad=True`` (PyTorch's default), only inputs with ``False``;
    with ``ceil_mode=True`` (output size rounded up, as PyTorch) the overhang beyond
    the padding is never counted."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = _checks.boolean("count_include_pad", count_include_pad)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, count_include_pad={self.count_include_pad}"

    def forward(self, x):
        y, self._ctx = avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                          ceil_mode=self.ceil_mode,
                                          count_include_pad=self.count_include_pad)
        return y


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
