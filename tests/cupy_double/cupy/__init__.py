"""A CuPy test double: NumPy on the CPU underneath, CuPy's refusals on top.

``import cupy`` finds this package when ``tests/cupy_double`` comes first on the
path (``GPUNET_CUPY_DOUBLE=1`` in the test suite). It offers only names the
installed real CuPy offers (read from it in another process) and rejects keyword
arguments the real functions do not take; arrays refuse implicit conversion to
NumPy and mixing with NumPy arrays; ``RawModule`` compiles with NVRTC through
CuPy's compiler code, then runs launches in ``tests/cuda_emulator``. It reports
``GPUNET_CUPY_DOUBLE_DEVICES`` devices (1 unless set), named as the double: never a
GPU. See README.md beside it.
"""
from __future__ import annotations

import numpy as _numpy

from . import _core, _manifest
from ._core import call_numpy as _call_numpy
from ._core import check_dtype as _check_dtype
from ._core import ndarray
from ._core import unwrap as _unwrap
from ._core import wrap as _wrap

__version__ = _manifest.MANIFEST["version"] + "+testdouble"
IS_TEST_DOUBLE = True


class ufunc:  # noqa: N801 - CuPy's name
    """A NumPy ufunc behind CuPy's checks; only the methods CuPy's ufunc has."""

    def __init__(self, name: str):
        self._numpy = getattr(_numpy, name)
        self.__name__ = name
        self.nin, self.nout, self.nargs = self._numpy.nin, self._numpy.nout, self._numpy.nargs

    def __call__(self, *args, **kwargs):
        out = kwargs.get("out")
        if out is not None and not isinstance(out, tuple):
            kwargs["out"] = (out,)
        result = _call_numpy(f"cupy.{self.__name__}", self._numpy, args, kwargs)
        return result if out is None else out

    def __getattr__(self, method):
        if method.startswith("_") or not _manifest.offered("cupy.ufunc", method):
            raise AttributeError(f"'cupy.ufunc' object has no attribute {method!r}")
        return lambda *args, **kwargs: _call_numpy(f"cupy.{self.__name__}.{method}",
                                                  getattr(self._numpy, method), args, kwargs)

    def __repr__(self):
        return f"<ufunc '{self.__name__}' (CuPy test double)>"


def _populate():
    namespace = globals()
    for name, entry in _manifest.NAMESPACES["cupy"].items():
        twin = getattr(_numpy, name, None)
        if name in namespace or name.startswith("_") or twin is None:
            continue
        if entry["numpy_object"] or entry["kind"] in ("attribute", "class"):
            namespace[name] = twin  # dtypes, constants, finfo, ...: the same objects in CuPy
        elif entry["kind"] == "ufunc" and isinstance(twin, _numpy.ufunc):
            namespace[name] = ufunc(name)
    _core.populate("cupy", namespace, _numpy)


# -- functions whose host/device semantics differ from NumPy's ------------------------
def _from_host(obj, dtype, order, copy, ndmin=0):
    if isinstance(obj, ndarray):  # from any device (a peer copy) to the current one
        copy = copy or obj._device != _core.current_device()
        obj = obj._a
    elif isinstance(obj, (list, tuple)):
        obj = _unwrap(obj, "cupy.array")
    result = _numpy.array(obj, dtype=dtype, order=order or "K", copy=copy, ndmin=ndmin)
    _check_dtype(result.dtype)
    return _wrap(result if result.base is None or not copy else result.copy())


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    """A device array from host or device data (always a copy unless ``copy=False``)."""
    return _from_host(obj, dtype, order, True if copy is None else copy, ndmin)


def asarray(a, dtype=None, order=None, copy=None, *, blocking=False):
    """``a`` on the device: no copy for a device array of the right dtype."""
    if isinstance(a, ndarray) and (dtype is None or _numpy.dtype(dtype) == a.dtype) \
            and copy is not True and a._device == _core.current_device():
        return a
    return _from_host(a, dtype, order, bool(copy) or not isinstance(a, ndarray))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    """A host copy of a device array; NumPy input comes back as it is."""
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return _numpy.asarray(a, order=order)


def get_array_module(*args):
    import sys
    for arg in args:
        if isinstance(arg, ndarray):
            return sys.modules[__name__]
    return _numpy


def is_available():
    return True


def get_default_memory_pool():
    from .cuda import memory
    return memory.default_pool


def get_default_pinned_memory_pool():
    from .cuda import pinned_memory
    return pinned_memory.default_pool


def RawModule(code=None, *, path=None, options=(), backend="nvrtc",  # noqa: N802
              translate_cucomplex=False, enable_cooperative_groups=False,
              name_expressions=None, jitify=False):
    from ._raw import RawModule as _RawModule
    if path is not None or name_expressions or jitify or backend != "nvrtc":
        raise NotImplementedError("the CuPy test double compiles source code with NVRTC only")
    return _RawModule(code, tuple(options))


_populate()
from . import cuda, lib, linalg, random  # noqa: E402,F401 - CuPy's submodules
