"""The double's ndarray: a NumPy array held inside, never handed out implicitly.

Strict where CuPy is strict: no ``__array__`` conversion, no NumPy arrays in
operators or ``cupy.*`` calls (Python and NumPy scalars are fine), no dtype a GPU
array cannot hold, only the attributes the real ``cupy.ndarray`` has.
"""
from __future__ import annotations

import operator
import threading
import weakref

import numpy

from . import _manifest

DEVICE_MEMORY = 16 * 2**30  # what the double's one device reports as its memory


class _Memory:
    """Bytes held by live arrays that own their buffer, against the pool's limit.
    ``held`` is what CuPy's pool would hold: freed blocks stay cached for reuse, so
    it is the most ever used since the pool last freed its blocks (a pool that
    reuses every block perfectly; CuPy's rounding and fragmentation only add)."""
    used = 0
    held = 0
    limit = DEVICE_MEMORY

    @classmethod
    def take(cls, array: numpy.ndarray, owner) -> None:
        from .cuda.memory import OutOfMemoryError
        nbytes = array.nbytes
        if cls.used + nbytes > cls.limit:
            raise OutOfMemoryError(nbytes, cls.used, cls.limit)
        cls.used += nbytes
        cls.held = max(cls.held, cls.used)
        weakref.finalize(owner, cls._give, nbytes)

    @classmethod
    def _give(cls, nbytes: int) -> None:
        cls.used -= nbytes


_current = threading.local()  # CUDA's current device is per host thread


def current_device() -> int:
    return getattr(_current, "device", 0)


def set_current_device(device: int) -> None:
    _current.device = device


def on_current_device(array, where: str) -> None:
    """CuPy's refusal of an array that lives on another device than the current one
    (between devices without peer access, the double's case)."""
    if array._device != current_device():
        raise ValueError(f"{where}: the device where the array resides ({array._device}) is "
                         f"different from the current device ({current_device()}). Peer "
                         "access is unavailable between these devices. (CuPy test double)")


def check_dtype(dtype) -> numpy.dtype:
    """CuPy holds booleans, integers, floats and complex numbers only."""
    dt = numpy.dtype(dtype)
    if dt.kind not in "biufc":
        raise TypeError(f"Unsupported dtype {dt} (the CuPy test double, like CuPy, holds "
                        "only boolean, integer, floating and complex arrays)")
    return dt


def _numpy_operand(where: str):
    return TypeError(f"{where}: a NumPy array cannot be used in a CuPy operation; move it "
                     "with cupy.asarray(...) first (Unsupported type <class 'numpy.ndarray'>)")


def unwrap(value, where: str):
    """The NumPy arrays inside ``value`` (recursing into lists and tuples);
    ``TypeError`` for a NumPy array, which real CuPy refuses."""
    if isinstance(value, ndarray):
        on_current_device(value, where)
        return value._a
    if isinstance(value, numpy.ndarray):
        raise _numpy_operand(where)
    if isinstance(value, (list, tuple)):
        return type(value)(unwrap(v, where) for v in value)
    if isinstance(value, numpy.generic) and value.dtype.kind not in "biufc":
        raise TypeError(f"{where}: Unsupported type {type(value)}")
    return value


def wrap(value):
    """NumPy results as double arrays; NumPy scalars as 0-d arrays, as CuPy's
    reductions and indexing return them."""
    if isinstance(value, numpy.ndarray):
        return ndarray._from_numpy(value)
    if isinstance(value, numpy.generic):
        return ndarray._from_numpy(numpy.asarray(value))
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def call_numpy(where: str, function, args, kwargs):
    """``function`` on the unwrapped arguments, its result wrapped; NumPy's
    MemoryError becomes CuPy's OutOfMemoryError."""
    args = unwrap(tuple(args), where)
    kwargs = {k: unwrap(v, where) for k, v in kwargs.items()}
    if "dtype" in kwargs and kwargs["dtype"] is not None:
        check_dtype(kwargs["dtype"])
    return compute(function, *args, **kwargs)


def compute(function, *args, **kwargs):
    """``function`` on NumPy values, its result wrapped."""
    try:
        return wrap(function(*args, **kwargs))
    except MemoryError as exc:
        from .cuda.memory import OutOfMemoryError
        raise OutOfMemoryError(0, _Memory.used, _Memory.limit) from exc


def numpy_twin(namespace: str, name: str, numpy_function):
    """``namespace.name`` of the double: the real signature's checks, then
    ``numpy_function`` on the unwrapped arguments."""
    def function(*args, **kwargs):
        _manifest.check_call(namespace, name, args, kwargs)
        return call_numpy(f"{namespace}.{name}", numpy_function, args, kwargs)
    function.__name__ = function.__qualname__ = name
    function.__doc__ = f"{namespace}.{name} of the CuPy test double (NumPy underneath)."
    return function


def populate(namespace: str, target: dict, numpy_module) -> None:
    """Every callable the real ``namespace`` offers that ``numpy_module`` has too,
    unless ``target`` defines it already."""
    for name, entry in _manifest.NAMESPACES[namespace].items():
        twin = getattr(numpy_module, name, None)
        if not name.startswith("_") and name not in target \
                and entry["kind"] in ("callable", "ufunc") and callable(twin):
            target[name] = numpy_twin(namespace, name, twin)


def _index(key):
    """Indices may hold device arrays, and (converted as CuPy does) host ones."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, ndarray):
        return key._a
    return key


class _DataPointer:
    """``ndarray.data``: what gpunet reads of CuPy's MemoryPointer."""

    def __init__(self, array: numpy.ndarray, device_id: int):
        self.ptr = array.ctypes.data
        self.mem = self
        self.size = array.nbytes
        self.device_id = device_id


class ndarray:  # noqa: N801 - CuPy's name
    """A device array of the double, holding a NumPy array (``_a``)."""

    __slots__ = ("_a", "_device", "__weakref__")
    __array_priority__ = 100  # NumPy defers its operators to ours, which refuse

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("the CuPy test double does not take memptr or strides")
        self._a = numpy.empty(shape, check_dtype(dtype), order=order)
        self._device = current_device()
        _Memory.take(self._a, self)

    @classmethod
    def _from_numpy(cls, array: numpy.ndarray) -> ndarray:
        check_dtype(array.dtype)
        obj = object.__new__(cls)
        obj._a = array
        obj._device = current_device()  # made by an operation there, or copied there
        if array.base is None:
            _Memory.take(array, obj)
        return obj

    # -- what CuPy refuses ---------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly. (CuPy test double)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if not _manifest.offered("cupy", ufunc.__name__):
            return NotImplemented
        where = f"numpy.{ufunc.__name__}"
        if "out" in kwargs:
            kwargs["out"] = tuple(unwrap(o, where) for o in kwargs["out"])
        return call_numpy(where, getattr(ufunc, method), inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        import cupy
        space = func.__module__.replace("numpy", "cupy", 1)
        if space not in ("cupy", "cupy.linalg") or not _manifest.offered(space, func.__name__):
            return NotImplemented
        target = cupy if space == "cupy" else cupy.linalg
        return getattr(target, func.__name__)(*args, **kwargs)

    # -- attributes ----------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: wrap(self._a.T))
    data = property(lambda self: _DataPointer(self._a, self._device))
    base = property(lambda self: None if self._a.base is None else wrap(self._a.base))

    @property
    def device(self):
        from .cuda import Device
        return Device(self._device)

    @shape.setter
    def shape(self, value):
        self._a.shape = value

    def __getattr__(self, name):
        if name.startswith("_") or not _manifest.offered("cupy.ndarray", name):
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        try:
            value = getattr(self._a, name)
        except AttributeError:
            raise AttributeError(f"cupy.ndarray.{name} is not implemented by the CuPy test "
                                 "double") from None
        if not callable(value):
            return wrap(value)

        def method(*args, **kwargs):
            _manifest.check_call("cupy.ndarray", name, args, kwargs)
            on_current_device(self, f"cupy.ndarray.{name}")
            return call_numpy(f"cupy.ndarray.{name}", value, args, kwargs)
        return method

    # -- explicit transfers --------------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        if out is not None:
            out[...] = self._a
            return out
        return numpy.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        if not isinstance(arr, numpy.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self._a.shape or arr.dtype != self._a.dtype:
            raise ValueError(f"Shape or dtype mismatch: {arr.shape} {arr.dtype} into "
                             f"{self._a.shape} {self._a.dtype}")
        self._a[...] = arr

    def item(self):
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        on_current_device(self, "cupy.ndarray.astype")
        check_dtype(dtype)
        return wrap(self._a.astype(dtype, order=order, copy=copy))

    def view(self, dtype=None, array_class=None):
        on_current_device(self, "cupy.ndarray.view")
        if dtype is None:
            return wrap(self._a.view())
        check_dtype(dtype)
        return wrap(self._a.view(dtype))

    def copy(self, order="C"):
        on_current_device(self, "cupy.ndarray.copy")
        return wrap(self._a.copy(order=order))

    def fill(self, value):
        on_current_device(self, "cupy.ndarray.fill")
        self._a.fill(unwrap(value, "cupy.ndarray.fill"))

    # -- Python protocols ----------------------------------------------------------
    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (wrap(row) for row in self._a)

    def __getitem__(self, key):
        on_current_device(self, "cupy.ndarray.__getitem__")
        return wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        on_current_device(self, "cupy.ndarray.__setitem__")
        if isinstance(value, ndarray):
            on_current_device(value, "cupy.ndarray.__setitem__")
            value = value._a
        self._a[_index(key)] = value

    def _scalar(self, kind):
        if self._a.size != 1:
            raise TypeError(f"only size-1 arrays can be converted to Python scalars ({kind})")
        return getattr(self._a.reshape(()).item(), "__" + kind + "__")()

    def __bool__(self):
        if self._a.size != 1:
            raise ValueError("The truth value of an array with more than one element is "
                             "ambiguous. Use a.any() or a.all()")
        return bool(self._a.item())

    def __float__(self):
        return float(self._a.reshape(()).item()) if self._a.size == 1 else self._scalar("float")

    def __int__(self):
        return int(self._a.reshape(()).item()) if self._a.size == 1 else self._scalar("int")

    def __complex__(self):
        return complex(self._a.reshape(()).item()) if self._a.size == 1 else \
            self._scalar("complex")

    def __repr__(self):
        return repr(self._a)

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    __hash__ = None

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):
        return (_rebuild, (self._a,))

    def __dlpack__(self, *args, **kwargs):
        raise TypeError("the CuPy test double holds host memory and exports no DLPack")


def _rebuild(array):
    return ndarray._from_numpy(array)


def _binary(name, fn, reflected=False):
    def method(self, other):
        if isinstance(other, numpy.ndarray):
            raise _numpy_operand(f"cupy.ndarray.{name}")
        if not isinstance(other, (ndarray, int, float, complex, bool, numpy.generic)):
            return NotImplemented
        on_current_device(self, f"cupy.ndarray.{name}")
        other = unwrap(other, name)
        return compute(fn, *((other, self._a) if reflected else (self._a, other)))
    method.__name__ = name
    return method


def _inplace(name, fn):
    def method(self, other):
        if isinstance(other, numpy.ndarray):
            raise _numpy_operand(f"cupy.ndarray.{name}")
        on_current_device(self, f"cupy.ndarray.{name}")
        fn(self._a, unwrap(other, name))
        return self
    method.__name__ = name
    return method


_OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
        "truediv": operator.truediv, "floordiv": operator.floordiv, "mod": operator.mod,
        "pow": operator.pow, "matmul": operator.matmul, "and": operator.and_,
        "or": operator.or_, "xor": operator.xor, "lshift": operator.lshift,
        "rshift": operator.rshift, "divmod": divmod}
for _name, _fn in _OPS.items():
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__", _fn))
    setattr(ndarray, f"__r{_name}__", _binary(f"__r{_name}__", _fn, reflected=True))
    _iop = getattr(operator, f"i{_name}", None)
    if _iop is not None and _manifest.offered("cupy.ndarray", f"__i{_name}__"):
        setattr(ndarray, f"__i{_name}__", _inplace(f"__i{_name}__", _iop))
for _name, _fn in {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
                   "gt": operator.gt, "ge": operator.ge}.items():
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__", _fn))
for _name, _fn in {"neg": operator.neg, "pos": operator.pos, "abs": operator.abs,
                   "invert": operator.invert}.items():
    setattr(ndarray, f"__{_name}__", (lambda f: lambda self: wrap(f(self._a)))(_fn))

# Only what the real cupy.ndarray has: a dunder the real one lacks is removed.
for _name in [n for n in vars(ndarray) if n.startswith("__") and n.endswith("__")]:
    if _name not in ("__init__", "__module__", "__qualname__", "__doc__", "__slots__",
                     "__weakref__", "__getattr__", "__dict__", "__array_priority__") \
            and not _manifest.offered("cupy.ndarray", _name) and _name != "__hash__":
        delattr(ndarray, _name)
