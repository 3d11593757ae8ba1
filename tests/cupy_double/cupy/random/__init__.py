"""``cupy.random`` of the double: NumPy's generators underneath, device arrays out.

The streams differ from CuPy's (its default bit generator is XORWOW): a test may
rely on a seed repeating a stream, never on the values themselves.
"""
import numpy as _numpy

from .. import _manifest
from .._core import call_numpy as _call_numpy


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


def _function(name):
    def function(*args, **kwargs):
        _manifest.check_call("cupy.random", name, args, kwargs)
        return _call_numpy(f"cupy.random.{name}", getattr(_numpy.random, name), args, kwargs)
    function.__name__ = name
    return function


for _name, _entry in _manifest.NAMESPACES["cupy.random"].items():
    if not _name.startswith("_") and _name not in globals() and _entry["kind"] == "callable" \
            and callable(getattr(_numpy.random, _name, None)):
        globals()[_name] = _function(_name)
