"""Splitting a dataset and cutting it into mini-batches, as in the notes."""
from __future__ import annotations

from collections.abc import Iterator

import numpy

from ..backend import generator, get_device, to_device


def _check_pair(x, y):
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")


def train_dev_test_split(x, y, fractions=(0.98, 0.01, 0.01), seed: int = 0):
    """Shuffle (seeded) and split into ``(train, dev, test)`` pairs. With millions of
    examples 98/1/1 is the notes' advice: dev and test need only be big enough."""
    _check_pair(x, y)
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions: expected three non-negative numbers summing to 1, "
                         f"got {fractions}")
    order = numpy.random.default_rng(seed).permutation(len(x))
    n_train = int(round(fractions[0] * len(x)))
    n_dev = int(round(fractions[1] * len(x)))
    cuts = (order[:n_train], order[n_train:n_train + n_dev], order[n_train + n_dev:])
    return tuple((x[idx], y[idx]) for idx in cuts)


def minibatches(x, y, batch_size: int, shuffle: bool = True, seed: int | None = None,
                device=None, drop_last: bool = False) -> Iterator[tuple]:
    """Yield ``(x_batch, y_batch)`` on ``device`` (default: the current one), in a
    seeded random order; the last, smaller batch is kept unless ``drop_last``."""
    _check_pair(x, y)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    device = get_device() if device is None else device
    n = len(x)
    if shuffle:
        rng = numpy.random.default_rng(seed) if seed is not None else generator(numpy)
        order = rng.permutation(n)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            xb, yb = x[idx], y[idx]
        yield to_device(xb, device), to_device(yb, device)
