"""Max and average pooling: no parameters, but they do shape the gradient."""
from __future__ import annotations

from .. import _checks
from ..backend import get_array_module
from ..ops import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward
from .module import Module, cpu_blas_limit


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

    pools_by_max = True

    _forward, _backward = staticmethod(max_pool2d_forward), staticmethod(max_pool2d_backward)


class AvgPool2d(_Pool2d):
    """Mean of each window, padding counted as zeros (PyTorch's default)."""

    _forward, _backward = staticmethod(avg_pool2d_forward), staticmethod(avg_pool2d_backward)


def _adaptive_matrix(xp, size_in: int, size_out: int, dtype):
    """Row ``i`` averages inputs ``floor(i n/m) .. ceil((i+1) n/m) - 1`` (PyTorch's windows)."""
    m = xp.zeros((size_out, size_in), dtype=dtype)
    for i in range(size_out):
        start, stop = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
        m[i, start:stop] = 1.0 / (stop - start)
    return m


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
        _checks.float_array("AdaptiveAvgPool2d", "input", x)
        _checks.rank("AdaptiveAvgPool2d", "input", x, 4, "(N, C, H, W)")
        xp = get_array_module(x)
        rows = _adaptive_matrix(xp, x.shape[2], self.output_size[0], x.dtype)
        cols = _adaptive_matrix(xp, x.shape[3], self.output_size[1], x.dtype)
        self._ctx = rows, cols
        with cpu_blas_limit(x):  # many tiny GEMMs; see gpunet.parallel
            return rows @ x @ cols.T

    def backward(self, dy):
        rows, cols = self._saved()
        with cpu_blas_limit(dy):
            return rows.T @ dy @ cols
