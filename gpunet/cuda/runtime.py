"""Kernel sources, compilation cache, launch, output allocation."""
from __future__ import annotations

import os
from functools import cache

import numpy

from ..backend import get_array_module

BLOCK = 256
NULL = numpy.uint64(0)  # a null pointer argument (e.g. no bias)
_enabled = os.environ.get("GPUNET_KERNELS", "1") != "0"
_POISON = os.environ.get("GPUNET_POISON", "0") == "1"


def kernels_enabled() -> bool:
    """Whether CuPy arrays go to the CUDA kernels (``GPUNET_KERNELS=0``: the xp path)."""
    return _enabled


def set_kernels_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = bool(enabled)


def uses_kernels(xp) -> bool:
    return _enabled and xp is not numpy


def poison_outputs() -> bool:
    """Tests set ``GPUNET_POISON=1`` so that launchers fill outputs with NaN first:
    an element a kernel forgets to write then shows up."""
    return _POISON


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def kernel_dir() -> str:
    """The folder holding the ``.cu`` sources: ``gpunet/_kernels`` in an installed
    wheel, ``kernels/`` at the top of a source checkout."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(here, "_kernels"), os.path.join(os.path.dirname(here),
                                                                   "kernels")):
        if os.path.isfile(os.path.join(candidate, "common.cuh")):
            return candidate
    raise FileNotFoundError(f"gpunet's CUDA sources are missing: neither {here}/_kernels nor "
                            f"{os.path.dirname(here)}/kernels holds common.cuh")


def source(name: str) -> str:
    with open(os.path.join(kernel_dir(), f"{name}.cu")) as f:
        return f.read()


_C_TYPES = {"float32": ("float", "float"), "float64": ("double", "double")}


def compile_options(dtype) -> tuple[str, ...]:
    real, acc = _C_TYPES[numpy.dtype(dtype).name]
    return ("-std=c++17", f"-Dreal_t={real}", f"-Dacc_t={acc}", f"-I{kernel_dir()}")


@cache
def _module(cupy, name: str, dtype: str, device_id: int):
    """The compiled module of ``kernels/<name>.cu`` for one dtype and device."""
    return cupy.RawModule(code=source(name), options=compile_options(dtype))


def launch(name: str, kernel: str, dtype, grid, block, args, shared_mem: int = 0) -> None:
    """Run ``kernel`` of ``kernels/<name>.cu`` (compiled for ``dtype``) on the device
    of the array arguments."""
    arrays = [a for a in args if hasattr(a, "data") and hasattr(a, "shape")]
    cupy = get_array_module(*arrays)
    function = _module(cupy, name, numpy.dtype(dtype).name, cupy.cuda.Device().id) \
        .get_function(kernel)
    function(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)


def new_output(xp, shape, dtype):
    """An uninitialised output (NaN-filled when poisoning for tests)."""
    out = xp.empty(shape, dtype=dtype)
    if _POISON:
        out.fill(numpy.nan if numpy.dtype(dtype).kind == "f" else -1)
    return out


@cache
def _geometry_cached(cupy_or_numpy, values: tuple, device_id: int):
    return cupy_or_numpy.asarray(numpy.array(values, dtype=numpy.int32))


def geometry(xp, values) -> object:
    """The int32 geometry array a kernel reads its sizes from, one per shape and device."""
    device_id = xp.cuda.Device().id if xp is not numpy else -1
    return _geometry_cached(xp, tuple(int(v) for v in values), device_id)
