"""Preprocessing and augmentation on the arrays' own device (NumPy or CuPy).

Random choices (crop offsets, flips) are drawn on the host from the generator
seeded by ``gpunet.manual_seed``, so they are the same on every device.
"""
from __future__ import annotations

import numpy

from .. import _checks
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


def _images(where: str, x) -> None:
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{where}: x must be a 4-D batch of images (N, C, H, W), got "
                         f"shape {tuple(getattr(x, 'shape', ())) or type(x).__name__}")


def random_crop(x, size, padding: int = 0, rng=None):
    """A random ``(h, w)`` window (``size``: an int for a square, or ``(h, w)``) of
    each image of ``x`` ``(N, C, H, W)`` after zero-padding every side by ``padding``."""
    where = "random_crop"
    _images(where, x)
    crop_h, crop_w = _checks.pair(f"{where}: size", size)
    padding = _checks.non_negative_int(f"{where}: padding", padding)
    xp = get_array_module(x)
    rng = generator(numpy) if rng is None else rng
    n, c, h, w = x.shape
    padded_h, padded_w = h + 2 * padding, w + 2 * padding
    if crop_h > padded_h or crop_w > padded_w:
        raise ValueError(f"{where}: size {crop_h}x{crop_w} exceeds the padded image "
                         f"{padded_h}x{padded_w} ({h}x{w} padded by {padding})")
    padded = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    device = device_of(x)
    top = to_device(rng.integers(0, padded_h - crop_h + 1, n), device)
    left = to_device(rng.integers(0, padded_w - crop_w + 1, n), device)
    rows = (top[:, None] + xp.arange(crop_h))[:, None, :, None]
    cols = (left[:, None] + xp.arange(crop_w))[:, None, None, :]
    return padded[xp.arange(n)[:, None, None, None], xp.arange(c)[None, :, None, None],
                  rows, cols]


def horizontal_flip(x, p: float = 0.5, rng=None):
    """Mirror each image of ``x`` ``(N, C, H, W)`` left-right with probability ``p``."""
    _images("horizontal_flip", x)
    p = _checks.probability("horizontal_flip: p", p)
    xp = get_array_module(x)
    rng = generator(numpy) if rng is None else rng
    flip = to_device(rng.random(x.shape[0]) < p, device_of(x))
    return xp.where(flip[:, None, None, None], x[..., ::-1], x)


def augment(x, crop_padding: int = 4, flip: float = 0.5, rng=None):
    """The usual CIFAR augmentation of ``x`` ``(N, C, H, W)``: pad by ``crop_padding``
    and crop back to ``H x W``, then mirror with probability ``flip``."""
    # checked here so that the messages name augment's arguments, not the helpers'
    _images("augment", x)
    crop_padding = _checks.non_negative_int("augment: crop_padding", crop_padding)
    flip = _checks.probability("augment: flip", flip)
    x = random_crop(x, tuple(x.shape[-2:]), crop_padding, rng)
    return horizontal_flip(x, flip, rng)
