"""Argument validation shared by ops, layers and losses.

Every message names the argument and shows what was expected and what came.
"""
from __future__ import annotations

import numbers

import numpy

FLOAT_DTYPES = ("float32", "float64")
# Compared as dtype objects: ``dtype.name`` is computed in Python on every call,
# and this check runs on each layer's input (CuPy arrays carry NumPy dtypes too).
# Byte-swapped floats compare unequal and take the slow path.
_FLOAT_DTYPE_OBJECTS = frozenset(numpy.dtype(name) for name in FLOAT_DTYPES)


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
    return int(value)


def boolean(name: str, value) -> bool:
    """``True`` or ``False`` (NumPy's bools too), nothing else: a flag given 0, 1 or a
    string is a mistake, not a choice."""
    if not isinstance(value, (bool, numpy.bool_)):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def pair(name: str, value, check=positive_int) -> tuple[int, int]:
    """An int or a pair of ints as ``(h, w)``, each passing ``check``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name}: expected an int or a pair, got {value!r}")
        return check(f"{name}[0]", value[0]), check(f"{name}[1]", value[1])
    v = check(name, value)
    return v, v


def probability(name: str, value, *, upper_inclusive: bool = True) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and (
        0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0)
    if not ok:
        bracket = "]" if upper_inclusive else ")"
        raise ValueError(f"{name}: expected a number in [0, 1{bracket}, got {value!r}")
    return float(value)


def non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    return float(value)


def float_array(where: str, name: str, x) -> None:
    """``x`` must be an array of float32 or float64."""
    dtype = getattr(x, "dtype", None)
    if not isinstance(dtype, numpy.dtype) or not hasattr(x, "shape"):
        kind = type(x).__name__ if type(x).__module__ == "builtins" else \
            f"{type(x).__module__}.{type(x).__name__}"
        hint = " (a PyTorch tensor: pass t.numpy())" if hasattr(x, "detach") else ""
        raise TypeError(f"{where}: {name} must be an array (NumPy or CuPy), got {kind}{hint}")
    if dtype in _FLOAT_DTYPE_OBJECTS:
        return
    if dtype.name in FLOAT_DTYPES:  # the right kind in the other byte order
        raise TypeError(f"{where}: {name} is big-endian {dtype.name} ({dtype.str}); convert "
                        f"with .astype('{dtype.name}')")
    raise TypeError(
        f"{where}: {name} must be float32 or float64, got {dtype.name} "
        f"(convert with .astype('float32'))")


def rank(where: str, name: str, x, ndim: int, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(
            f"{where}: {name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")


def same_dtype(where: str, **named) -> None:
    """All named arrays (``None`` skipped) share one dtype."""
    items = [(n, a.dtype) for n, a in named.items() if a is not None]
    for n, d in items[1:]:
        if d != items[0][1]:
            raise TypeError(
                f"{where}: {n} is {d.name} but {items[0][0]} is {items[0][1].name}; "
                "cast one of them (Module.to(dtype=...) or .astype)")


def shape(where: str, name: str, x, expected) -> None:
    """``x`` must have exactly the shape ``expected`` (a backward's ``dy``, say)."""
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{where}: {name} must have shape {tuple(expected)}, "
                         f"got {tuple(x.shape)}")
