"""``cupy.linalg`` of the double: numpy.linalg underneath, only the real names."""
import numpy as _numpy

from . import _manifest
from ._core import call_numpy as _call_numpy


def _function(name):
    def function(*args, **kwargs):
        _manifest.check_call("cupy.linalg", name, args, kwargs)
        return _call_numpy(f"cupy.linalg.{name}", getattr(_numpy.linalg, name), args, kwargs)
    function.__name__ = name
    return function


for _name, _entry in _manifest.NAMESPACES["cupy.linalg"].items():
    if not _name.startswith("_") and _entry["kind"] == "callable" \
            and callable(getattr(_numpy.linalg, _name, None)):
        globals()[_name] = _function(_name)
