"""``Conv2d``: cross-correlation of ``(N, C, H, W)`` with ``K`` filters ``(C, R, S)``."""
from __future__ import annotations

from .. import _checks
from ..init import constant, initialize
from ..ops import conv2d_forward, normalize_padding
from .module import Module, Parameter


class Conv2d(Module):
    """``y = x (*) W + b``, output ``floor((n + 2p - f) / s) + 1`` per spatial axis.

    ``padding``: int, pair, ``"valid"`` (0) or ``"same"`` (stride 1, output size
    equals input size).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding=0, bias: bool = True, init="he"):
        super().__init__()
        self.in_channels = _checks.positive_int("in_channels", in_channels)
        self.out_channels = _checks.positive_int("out_channels", out_channels)
        self.kernel_size = _checks.pair("kernel_size", kernel_size)
        self.stride = _checks.pair("stride", stride)
        normalize_padding(padding, self.kernel_size, self.stride)  # validates
        self.padding = padding
        shape = (out_channels, in_channels, *self.kernel_size)
        self.weight = Parameter(initialize(init, shape))
        self.bias = Parameter(constant(out_channels), decay=False) if bias else None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}")

    def forward(self, x):
        where = f"Conv2d({self.extra_repr()})"
        _checks.float_array(where, "input", x)
        _checks.rank(where, "input", x, 4, "(N, C, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{where}: input must have {self.in_channels} channels, got "
                             f"{x.shape[1]} (input shape {tuple(x.shape)})")
        bias = None if self.bias is None else self.bias.data
        y, self._ctx = conv2d_forward(x, self.weight.data, bias, self.stride,
                                      self.padding_for(x))
        return y

    def padding_for(self, x):
        """The padding of this call: ``padding``, whatever ``x`` (a subclass may adapt
        it to the input's size)."""
        return self.padding

    def backward(self, dy, input_grad: bool = True):
        return self._add_grads(self._saved().backward(dy, input_grad), self.weight, self.bias)
