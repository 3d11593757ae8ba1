"""``cupy.random`` of the double: NumPy's generators underneath, device arrays out.

The streams differ from CuPy's (its default bit generator is XORWOW): a test may
rely on a seed repeating a stream, never on the values themselves.
"""
import numpy as _numpy

from .. import _manifest
from .._core import call_numpy as _call_numpy
from .._core import populate as _populate


class Generator:
    """``cupy.random.Generator``: only the methods the real one has."""

    def __init__(self, bit_generator):
        self._numpy = _numpy.random.Generator(bit_generator)

    def __getattr__(self, name):
        if name.startswith("_") or not _manifest.offered("cupy.random.Generator", name):
            raise AttributeError(f"'cupy.random.Generator' object has no attribute {name!r}")
        method = getattr(self._numpy, name)

        def call(*args, **kwargs):
            _manifest.check_call("cupy.random.Generator", name, args, kwargs)
            return _call_numpy(f"cupy.random.Generator.{name}", method, args, kwargs)
        return call


def default_rng(seed=None):
    return Generator(_numpy.random.PCG64(seed))


_populate("cupy.random", globals(), _numpy.random)
