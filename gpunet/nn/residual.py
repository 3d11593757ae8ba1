"""Residual blocks (He et al., 2016): ``y = relu(F(x) + shortcut(x))``.

The block's output is a sum, so its backward hands the same upstream gradient to
both paths and adds what they return: ``dx = dF/dx^T dz + dshortcut/dx^T dz``
with ``dz = dy * [F(x) + shortcut(x) > 0]``.
"""
from __future__ import annotations

from .. import _checks
from .activation import ReLU
from .conv2d import Conv2d
from .module import Module, Sequential
from .normalization import BatchNorm2d


class BasicBlock(Module):
    """ResNet-18/34's block: two 3x3 convolutions with batch norm, and a shortcut.

    ``F(x) = bn2(conv2(relu(bn1(conv1(x)))))``; ``conv1`` has ``stride``. The
    shortcut is the identity when the shape is kept, else ``downsample``, a 1x1
    convolution with ``stride`` and a batch norm (torchvision's option B). Names
    and state-dict keys are torchvision's (``conv1``, ``bn1``, ``conv2``, ``bn2``,
    ``downsample.0``, ``downsample.1``). Input ``(N, in_planes, H, W)``, output
    ``(N, planes, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.in_planes = _checks.positive_int("in_planes", in_planes)
        self.planes = _checks.positive_int("planes", planes)
        self.stride = _checks.positive_int("stride", stride)
        # no biases: each convolution feeds a batch norm, which subtracts the mean
        self.conv1 = Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = Sequential(Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                         BatchNorm2d(planes))
        self.relu2 = ReLU()  # of the sum

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.planes}, stride={self.stride}"

    def forward(self, x):
        residual = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(residual + shortcut)

    def backward(self, dy):
        dz = self.relu2.backward(dy)  # the gradient of the sum, handed to both paths
        dx_residual = self.conv1.backward(self.bn1.backward(self.relu1.backward(
            self.conv2.backward(self.bn2.backward(dz)))))
        dx_shortcut = dz if self.downsample is None else self.downsample.backward(dz)
        return dx_residual + dx_shortcut
