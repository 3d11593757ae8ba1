"""ResNet-18 for 32x32 images (He et al., 2016, with the CIFAR stem)."""
from __future__ import annotations

from ..nn import (
    AdaptiveAvgPool2d,
    BasicBlock,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    ReLU,
    Sequential,
)
from .scaling import init_for_what_feeds_each_layer


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> Sequential:
    """``blocks`` BasicBlocks; the first changes width and (``stride``) size."""
    return Sequential(BasicBlock(in_planes, planes, stride),
                      *(BasicBlock(planes, planes) for _ in range(blocks - 1)))


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> Sequential:
    """ResNet-18 for 32x32x3: a 3x3 stem convolution (64, stride 1, no max pool), four
    stages of two BasicBlocks (64, 128, 256, 512 channels; stride 2 from the second
    stage on, 1x1 convolution + batch-norm shortcuts where the shape changes),
    global average pooling and one linear layer: 11,173,962 parameters with ten
    classes (and 9,600 batch-norm running statistics). Keys are torchvision's
    (``conv1.weight``, ``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``,
    ``fc.bias``), so a torch ResNet of the same layout loads gpunet's state dict."""
    return init_for_what_feeds_each_layer(Sequential({
        "conv1": Conv2d(in_channels, 64, 3, padding=1, bias=False),
        "bn1": BatchNorm2d(64),
        "relu": ReLU(),
        "layer1": _stage(64, 64, 2, 1),
        "layer2": _stage(64, 128, 2, 2),
        "layer3": _stage(128, 256, 2, 2),
        "layer4": _stage(256, 512, 2, 2),
        "avgpool": AdaptiveAvgPool2d(1),
        "flatten": Flatten(),
        "fc": Linear(512, num_classes)}))
