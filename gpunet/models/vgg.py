"""VGG (Simonyan & Zisserman, 2014): 3x3 convolutions in blocks, 2x2 max pooling."""
from __future__ import annotations

from ..nn import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)
from .scaling import init_for_what_feeds_each_layer

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M"]
VGG_CIFAR = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"]


def _features(config, batch_norm: bool, in_channels: int = 3) -> Sequential:
    layers = []
    for item in config:
        if item == "M":  # before the last ReLU: the same function on a quarter of the values
            layers.insert(len(layers) - 1, MaxPool2d(2))
            continue
        # no bias before a batch norm, which subtracts the mean (torchvision's too)
        layers.append(Conv2d(in_channels, item, 3, padding=1, bias=not batch_norm))
        layers += [BatchNorm2d(item)] if batch_norm else []
        layers.append(ReLU())
        in_channels = item
    return Sequential(*layers)


def vgg16(num_classes: int = 1000) -> Sequential:
    """224x224x3 input; 138,357,544 parameters with 1000 classes; torchvision's keys."""
    classifier = Sequential(Linear(512 * 7 * 7, 4096), ReLU(), Dropout(0.5),
                            Linear(4096, 4096), ReLU(), Dropout(0.5), Linear(4096, num_classes))
    return init_for_what_feeds_each_layer(Sequential({
        "features": _features(VGG16, False), "avgpool": AdaptiveAvgPool2d(7),
        "flatten": Flatten(), "classifier": classifier}))


def vgg_cifar(num_classes: int = 10, batch_norm: bool = True) -> Sequential:
    """A VGG-style net for 32x32x3: conv64, pool, conv128, pool, 2x conv256, pool,
    2x conv512, pool (all 3x3), then FC256 and FC10: 5,029,706 parameters with batch
    norm (the convolutions before it have no bias), 5,027,978 without."""
    return init_for_what_feeds_each_layer(Sequential({
        "features": _features(VGG_CIFAR, batch_norm), "flatten": Flatten(),
        "classifier": Sequential(Linear(512 * 2 * 2, 256), ReLU(), Dropout(0.5),
                                 Linear(256, num_classes))}))
