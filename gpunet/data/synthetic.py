"""A small, learnable stand-in dataset for examples and tests when a real one is
absent: each class is a fixed random template, each image that template plus noise."""
from __future__ import annotations

import numpy


def synthetic_images(n_train: int = 2000, n_test: int = 500, shape=(3, 32, 32),
                     classes: int = 10, noise: float = 0.8, seed: int = 0, split=None):
    """``((x_train, y_train), (x_test, y_test))`` as uint8 images and int64 labels,
    like the real loaders return (``split="train"`` or ``"test"``: that pair alone;
    the images are the same either way)."""
    from .datasets import _splits
    parts = _splits(split)
    rng = numpy.random.default_rng(seed)
    templates = rng.random((classes, *shape))

    def draw(n):
        labels = rng.integers(0, classes, n)
        images = templates[labels] + noise * rng.standard_normal((n, *shape)) * 0.25
        return (numpy.clip(images, 0, 1) * 255).astype(numpy.uint8), labels.astype(numpy.int64)

    drawn = {"train": draw(n_train), "test": draw(n_test)}  # in this order: same images
    return drawn[parts[0]] if split is not None else (drawn["train"], drawn["test"])
