"""Weight initialisers, from the notes: ``W = randn(shape) * sqrt(var)``.

``he``: var = 2 / fan_in (ReLU); ``xavier``: var = 1 / fan_in (tanh, as the
notes define it); ``glorot``: var = 2 / (fan_in + fan_out); ``zeros`` for the
symmetry demonstration. Draws come from the CPU generator seeded by
``gpunet.manual_seed``, so a seed gives the same weights on every device.

Inside ``with shapes_only():`` nothing is drawn or allocated: models built there
hold read-only zero views of their parameters' shapes, to count or inspect
(VGG-16's 138 M parameters in milliseconds), never to train.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy

from .backend import generator, get_device, to_device

__all__ = ["he", "xavier", "glorot", "zeros", "initialize", "fans", "constant", "shapes_only"]

_shapes_only = False


def he(shape, fan_in, fan_out, rng):
    return rng.standard_normal(shape) * numpy.sqrt(2.0 / fan_in)


def xavier(shape, fan_in, fan_out, rng):
    return rng.standard_normal(shape) * numpy.sqrt(1.0 / fan_in)


def glorot(shape, fan_in, fan_out, rng):
    return rng.standard_normal(shape) * numpy.sqrt(2.0 / (fan_in + fan_out))


def zeros(shape, fan_in, fan_out, rng):
    return numpy.zeros(shape)


INITIALIZERS: dict[str, Callable] = {"he": he, "xavier": xavier, "glorot": glorot,
                                     "zeros": zeros}


def fans(shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight ``(out, in)`` or ``(K, C, R, S)``, as PyTorch."""
    receptive = int(numpy.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def initialize(init, shape, dtype="float32"):
    """A new weight of ``shape`` on the current device, from ``init`` (a name above
    or a callable ``(shape, fan_in, fan_out, rng) -> array``)."""
    if isinstance(init, str):
        if init not in INITIALIZERS:
            raise ValueError(f"init: expected one of {sorted(INITIALIZERS)} or a callable, "
                             f"got {init!r}")
        init = INITIALIZERS[init]
    elif not callable(init):
        raise TypeError(f"init: expected a name or a callable, got {type(init).__name__}")
    if _shapes_only:
        return _zero_view(shape, dtype)
    fan_in, fan_out = fans(shape)
    array = numpy.asarray(init(tuple(shape), fan_in, fan_out, generator(numpy)))
    if array.shape != tuple(shape):
        raise ValueError(f"init: the initializer returned shape {array.shape}, "
                         f"expected {tuple(shape)}")
    return to_device(array.astype(dtype), get_device())


def constant(shape, value: float = 0.0, dtype="float32"):
    """An array of ``value`` on the current device (biases, batch-norm state)."""
    if _shapes_only:
        return _zero_view(shape, dtype)
    return get_device().xp.full(shape, value, dtype=dtype)


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """Within the block, :func:`initialize` and :func:`constant` return read-only
    zero views of the requested shape (stride 0: no memory, no random draws).
    A model built there has the real model's parameter names and shapes, so
    ``sum(p.data.size for p in model.parameters())`` counts it; its values are
    zeros and an optimizer step on it raises."""
    global _shapes_only
    previous, _shapes_only = _shapes_only, True
    try:
        yield
    finally:
        _shapes_only = previous


def _zero_view(shape, dtype):
    xp = get_device().xp
    return xp.broadcast_to(xp.zeros((), dtype=dtype), shape)
