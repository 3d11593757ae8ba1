"""AlexNet (Krizhevsky et al., 2012): torchvision's single-tower layout, the paper's
two-GPU network (``groups=2``), and a CIFAR-sized version."""
from __future__ import annotations

from .. import _checks
from ..nn import (
    AdaptiveAvgPool2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    LocalResponseNorm,
    MaxPool2d,
    ReLU,
    Sequential,
)
from .scaling import init_for_what_feeds_each_layer


def alexnet(num_classes: int = 1000, lrn: bool = False, groups: int = 1) -> Sequential:
    """224x224x3 input; 61,100,840 parameters with 1000 classes; keys match
    torchvision's ``features.N`` / ``classifier.N``.

    ``groups=2``: the paper's network as it was split across two GPUs: 96, 256, 384,
    384 and 256 filters, conv2, conv4 and conv5 in two groups (each GPU's half sees
    only its own half of the previous layer's maps; conv3 and the fully connected
    layers cross over), 60,965,224 parameters with 1000 classes (the paper's "60
    million"). The same keys; only the convolutions' shapes differ.

    ``lrn=True`` adds the paper's
    local response normalisation (size 5, alpha 1e-4, beta 0.75, k 2) after the
    first two ReLUs, shifting the feature indices. Max pooling runs before the ReLU
    it follows in torchvision (same function, since ``max(relu(a), relu(b)) =
    relu(max(a, b))``, and the ReLU then works on the pooled quarter); the
    parameters keep their keys."""
    def activate_and_pool():  # new layers each time: an instance holds one forward's context
        if lrn:
            return [ReLU(), LocalResponseNorm(5, 1e-4, 0.75, 2.0), MaxPool2d(3, 2)]
        return [MaxPool2d(3, 2), ReLU()]

    groups = _checks.positive_int("groups", groups)
    if groups not in (1, 2):
        raise ValueError(f"groups: expected 1 (torchvision's single tower) or 2 (the paper's "
                         f"two GPUs), got {groups}")
    widths = (64, 192, 384, 256, 256) if groups == 1 else (96, 256, 384, 384, 256)
    c1, c2, c3, c4, c5 = widths
    features = Sequential(
        Conv2d(3, c1, 11, stride=4, padding=2), *activate_and_pool(),
        Conv2d(c1, c2, 5, padding=2, groups=groups), *activate_and_pool(),
        Conv2d(c2, c3, 3, padding=1), ReLU(),
        Conv2d(c3, c4, 3, padding=1, groups=groups), ReLU(),
        Conv2d(c4, c5, 3, padding=1, groups=groups), MaxPool2d(3, 2), ReLU())
    classifier = Sequential(
        Dropout(0.5), Linear(256 * 6 * 6, 4096), ReLU(),
        Dropout(0.5), Linear(4096, 4096), ReLU(), Linear(4096, num_classes))
    return init_for_what_feeds_each_layer(Sequential({
        "features": features, "avgpool": AdaptiveAvgPool2d(6), "flatten": Flatten(),
        "classifier": classifier}))


def alexnet_cifar(num_classes: int = 10, dropout: float = 0.0) -> Sequential:
    """32x32x3 input: conv64@5, pool 3/2, conv128@5, pool 3/2, conv192@3, conv192@3,
    conv128@3, pool 3/2, FC384, FC192, FC10 (ReLU throughout, after the pooling
    where a pooling follows the convolution: see :func:`alexnet`)."""
    def drop():  # a new layer each time: a module instance holds one forward's context
        return [Dropout(dropout)] if dropout else []

    return init_for_what_feeds_each_layer(Sequential(
        Conv2d(3, 64, 5, padding=2), MaxPool2d(3, 2), ReLU(),
        Conv2d(64, 128, 5, padding=2), MaxPool2d(3, 2), ReLU(),
        Conv2d(128, 192, 3, padding=1), ReLU(),
        Conv2d(192, 192, 3, padding=1), ReLU(),
        Conv2d(192, 128, 3, padding=1), MaxPool2d(3, 2), ReLU(),
        Flatten(), *drop(), Linear(128 * 3 * 3, 384), ReLU(), *drop(), Linear(384, 192), ReLU(),
        Linear(192, num_classes)))
