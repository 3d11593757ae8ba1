"""Preprocessing and augmentation on the arrays' own device (NumPy or CuPy).

Random choices (crop offsets, flips) are drawn on the host from the generator
seeded by ``gpunet.manual_seed``, so they are the same on every device.
"""
from __future__ import annotations

import numpy

from ..backend import device_of, generator, get_array_module, to_device, to_numpy


def to_float(x, scale: float = 1 / 255, dtype="float32"):
    """uint8 images to floats in [0, 1] (or any ``scale``)."""
    xp = get_array_module(x)
    return (x.astype(dtype) * xp.asarray(scale, dtype=dtype))


class Standardize:
    """Per-channel ``(x - mean) / std`` with statistics from the training set
    (``fit``), applied unchanged to dev and test sets."""

    def __init__(self, mean=None, std=None):
        self.mean, self.std = mean, std

    def fit(self, x) -> Standardize:
        axes = (0,) + tuple(range(2, x.ndim))
        self.mean = x.mean(axis=axes, dtype="float64")
        self.std = x.std(axis=axes, dtype="float64")
        self.std[self.std == 0] = 1.0
        return self

    def __call__(self, x):
        if self.mean is None:
            raise RuntimeError("Standardize: call fit(x_train) first")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        # the statistics may have been fitted on another device than x is on
        mean = to_device(self.mean, device_of(x)).astype(x.dtype).reshape(shape)
        std = to_device(self.std, device_of(x)).astype(x.dtype).reshape(shape)
        return (x - mean) / std

    def state_dict(self) -> dict:
        return {"mean": to_numpy(self.mean).tolist(), "std": to_numpy(self.std).tolist()}


def random_crop(x, size: int, padding: int = 0, rng=None):
    """A random ``size x size`` window of each image after zero-padding by ``padding``."""
    xp = get_array_module(x)
    rng = generator(numpy) if rng is None else rng
    n, c, h, w = x.shape
    if size > h + 2 * padding or size > w + 2 * padding:
        raise ValueError(f"random_crop: size {size} exceeds the padded image "
                         f"{h + 2 * padding}x{w + 2 * padding}")
    padded = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    device = device_of(x)
    top = to_device(rng.integers(0, h + 2 * padding - size + 1, n), device)
    left = to_device(rng.integers(0, w + 2 * padding - size + 1, n), device)
    span = xp.arange(size)
    rows = (top[:, None] + span)[:, None, :, None]
    cols = (left[:, None] + span)[:, None, None, :]
    return padded[xp.arange(n)[:, None, None, None], xp.arange(c)[None, :, None, None],
                  rows, cols]


def horizontal_flip(x, p: float = 0.5, rng=None):
    """Mirror each image left-right with probability ``p``."""
    xp = get_array_module(x)
    rng = generator(numpy) if rng is None else rng
    flip = to_device(rng.random(x.shape[0]) < p, device_of(x))
    return xp.where(flip[:, None, None, None], x[..., ::-1], x)


def augment(x, crop_padding: int = 4, flip: float = 0.5, rng=None):
    """The usual CIFAR augmentation: pad-and-crop back to size, then a random flip."""
    x = random_crop(x, x.shape[-1], crop_padding, rng)
    return horizontal_flip(x, flip, rng)
