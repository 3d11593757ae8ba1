"""``Conv2d``: cross-correlation of ``(N, C, H, W)`` with ``K`` filters ``(C / groups, R,
S)``."""
from __future__ import annotations

from .. import _checks
from .._context import dilated_kernel
from ..init import constant, initialize
from ..ops import conv2d_forward, normalize_padding
from .module import Module, Parameter


class Conv2d(Module):
    """``y = x (*) W + b``, output ``floor((n + 2p - f) / s) + 1`` per spatial axis.

    ``padding``: int, pair, ``"valid"`` (0) or ``"same"`` (stride 1, output size
    equals input size). ``dilation``: taps ``d`` apart, the kernel spanning ``d (f -
    1) + 1`` pixels. ``groups``: the channels and filters split into that many
    independent convolutions (both divisible by it), weight ``(out_channels,
    in_channels / groups, R, S)`` as in PyTorch. The CPU accelerators have no
    dilation: a dilated layer on NumPy runs the im2col reference path
    (:func:`gpunet.ops.conv2d_forward`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding=0, bias: bool = True, init="he", dilation=1, groups: int = 1):
        super().__init__()
        self.in_channels = _checks.positive_int("in_channels", in_channels)
        self.out_channels = _checks.positive_int("out_channels", out_channels)
        self.kernel_size = _checks.pair("kernel_size", kernel_size)
        self.stride = _checks.pair("stride", stride)
        self.dilation = _checks.pair("dilation", dilation)
        self.groups = _checks.positive_int("groups", groups)
        for name, count in (("in_channels", in_channels), ("out_channels", out_channels)):
            if count % groups:
                raise ValueError(f"groups: expected a divisor of {name}={count}, got {groups}")
        # validates
        normalize_padding(padding, dilated_kernel(self.kernel_size, self.dilation), self.stride)
        self.padding = padding
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = Parameter(initialize(init, shape))
        self.bias = Parameter(constant(out_channels), decay=False) if bias else None

    def extra_repr(self) -> str:
        extra = "" if self.dilation == (1, 1) else f", dilation={self.dilation}"
        if self.groups != 1:
            extra += f", groups={self.groups}"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}{extra}")

    def forward(self, x):
        bias = None if self.bias is None else self.bias.data
        y, self._ctx = conv2d_forward(x, self.weight.data, bias, self.stride,
                                      self.padding_for(x), dilation=self.dilation,
                                      groups=self.groups, where=f"Conv2d({self.extra_repr()})",
                                      x_name="input")
        return y

    def padding_for(self, x):
        """The padding of this call: ``padding``, whatever ``x`` (a subclass may adapt
        it to the input's size)."""
        return self.padding

    def backward(self, dy, input_grad: bool = True):
        return self._add_grads(self._saved().backward(dy, input_grad), self.weight, self.bias)
