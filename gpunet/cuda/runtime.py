"""Kernel sources, compilation cache, launch, output allocation."""
from __future__ import annotations

import collections
import os
import re
from functools import cache, lru_cache
from typing import NamedTuple

import numpy

from .. import _checks, config
from ..backend import get_array_module

BLOCK = 256


def kernels_enabled() -> bool:
    """Whether CuPy arrays go to the CUDA kernels (``GPUNET_KERNELS=0``: the xp path)."""
    return config.get("kernels")


def set_kernels_enabled(enabled: bool) -> None:
    """``gpunet.config.update(kernels=enabled)``."""
    config.update(kernels=_checks.boolean("enabled", enabled))


def allow_tf32() -> bool:
    """Whether float32 convolutions on the GPU may run on TF32 tensor cores (off by
    default; ``GPUNET_ALLOW_TF32=1`` or :func:`set_allow_tf32`)."""
    return config.get("allow_tf32")


def set_allow_tf32(enabled: bool) -> None:
    """Let float32 convolutions use TF32 tensor cores (as PyTorch's ``allow_tf32``):
    A and B are rounded to 10 mantissa bits before each product, a relative error
    near 2**-11 ~ 5e-4 per product instead of 2**-24 (measured on random data,
    ~3e-4 of the scale of the output: tests/test_kernels.py), with float32
    accumulation. float64 never uses it. ``gpunet.config.update(allow_tf32=enabled)``."""
    config.update(allow_tf32=_checks.boolean("enabled", enabled))


TF32_MIN_CAPABILITY = 80  # cvt.tf32 and mma .tf32: Ampere on


def tf32_supported(xp) -> bool:
    """Whether the current device of ``xp`` has TF32 tensor cores (sm_80 on; below,
    kernels/conv2d.cu compiles its ``_tf32`` kernels as the float ones). NumPy: the
    tests' emulation, which has them."""
    if xp is numpy:
        return True
    return int(xp.cuda.Device().compute_capability) >= TF32_MIN_CAPABILITY


EMULATED_SMS = 132  # NumPy arrays (the tests' emulation) plan for an H100 SXM


@cache
def _sm_count(xp, device_id: int) -> int:
    return int(xp.cuda.runtime.getDeviceProperties(device_id)["multiProcessorCount"])


def sm_count(xp) -> int:
    """The current device's streaming multiprocessors, which the launchers size
    grids and split-K to (read once per device)."""
    if xp is numpy:
        return EMULATED_SMS
    return _sm_count(xp, xp.cuda.Device().id)


def uses_kernels(xp) -> bool:
    return xp is not numpy and kernels_enabled()


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


INDEX_LIMIT = 2**31  # the kernels index with int32: every array a launch touches is smaller
# ... by this much: kernels compute indices past an array's end before a `< size`
# guard drops them (a block-strided loop, `j += blockDim.x`, steps up to 255 past the
# end of batch norm's and the bias gradient's runs; the GEMMs' reduction index a
# step past; a 1-D grid rounds up to a tile, 256 columns or 256 threads of 4-float
# vectors). An int index past 2**31 - 1 would wrap negative and pass that guard.
INDEX_HEADROOM = 1024


def index_limit() -> int:
    """The most elements an array the kernels index may hold."""
    return INDEX_LIMIT - INDEX_HEADROOM


def indexable(*sizes: int) -> bool:
    """Whether arrays of these element counts fit the kernels' 32-bit indices, with a
    tile of headroom (``ops`` sends larger ones down the xp path instead)."""
    return all(int(size) <= index_limit() for size in sizes)


def check_indexable(where: str, **sizes: int) -> None:
    for name, size in sizes.items():
        if int(size) > index_limit():
            raise ValueError(f"{where}: {name} has {int(size)} elements; the CUDA kernels take "
                             f"at most {index_limit()} (2**31 less a tile, for 32-bit indices; "
                             f"use_kernels=False takes the xp path)")


def runs(m: int, rows: int, target_blocks: int, min_run: int) -> tuple[int, int]:
    """``(parts, chunk)`` for ``rows`` reductions of ``m`` values each, one block per
    (run, row): each row's values in ``parts`` runs of ``chunk`` (the last shorter),
    about ``target_blocks`` blocks in all, no run under ``min_run`` values. From the
    shapes only, so that the summation order never depends on the GPU."""
    parts = max(1, min(ceil_div(target_blocks, rows), ceil_div(m, min_run)))
    chunk = ceil_div(m, parts)
    return ceil_div(m, chunk), chunk


MAX_GRID_ROWS = 65535  # gridDim.y: the per-channel reductions run a row of blocks a channel


def check_grid_rows(where: str, what: str, count: int) -> None:
    if int(count) > MAX_GRID_ROWS:
        raise ValueError(f"{where}: {int(count)} {what}; the CUDA kernels take at most "
                         f"{MAX_GRID_ROWS} (use_kernels=False takes the xp path)")


def fast_divisor(d: int) -> tuple[int, int]:
    """``(magic, shift)`` with which ``divide`` in kernels/common.cuh computes ``n // d``
    for ``0 <= n < 2**31`` (Granlund and Montgomery): ``shift = ceil(log2 d)``,
    ``magic = floor(2**32 (2**shift - d) / d) + 1``, returned as a signed int32."""
    d = int(d)
    if not 1 <= d < INDEX_LIMIT:
        raise ValueError(f"fast_divisor: the divisor must be in [1, 2**31), got {d}")
    shift = (d - 1).bit_length()
    magic = (2**32 * (2**shift - d)) // d + 1
    return (magic - 2**32 if magic >= 2**31 else magic), shift


def divide(n: int, magic: int, shift: int) -> int:
    """What the kernels' ``divide`` computes, in Python (for the tests)."""
    t = (n * (magic % 2**32)) >> 32
    return ((t + n) % 2**32) >> shift


def with_divisors(values, divisors) -> tuple[int, ...]:
    """``values`` followed by ``fast_divisor(d)`` of each of ``divisors``: the values
    of the geometry structs of kernels/*.cu (:func:`geometry`)."""
    result = [int(v) for v in values]
    for d in divisors:
        result += fast_divisor(d)
    return tuple(result)


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


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.M)
_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once[ \t]*$", re.M)


def source(name: str) -> str:
    """``kernels/<name>.cu`` with the project's own headers inlined (recursively,
    each once, as ``#pragma once`` would): CuPy's on-disk cache keys on the source
    string and the options, not on the files it includes, so an edited common.cuh
    would otherwise keep running the old cubin. ``#line`` directives keep errors
    naming the file and line they come from."""
    return _inlined(kernel_dir(), f"{name}.cu", set())


def _inlined(folder: str, file: str, seen: set) -> str:
    seen.add(file)
    with open(os.path.join(folder, file)) as f:
        text = f.read()
    parts, last = [], 0
    for match in _INCLUDE.finditer(text):
        header = match.group(1)
        if not os.path.isfile(os.path.join(folder, header)):
            continue  # not one of ours: left to the compiler's include path
        line = text.count("\n", 0, match.end()) + 2  # the line after the #include
        parts.append(text[last:match.start()])
        if header not in seen:
            parts.append(f'#line 1 "{header}"\n{_inlined(folder, header, seen)}\n'
                         f'#line {line} "{file}"')
        else:
            parts.append(f'#line {line} "{file}"')  # already inlined above
        last = match.end()
    text = "".join(parts) + text[last:]
    # inlined once already; in one translation unit the pragma would be "in main file"
    return _PRAGMA_ONCE.sub("", text) if file.endswith(".cuh") else text


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
    arrays = [a for a in args if hasattr(a, "data") and hasattr(a, "shape")
              and not isinstance(a, numpy.generic)]
    cupy = get_array_module(*arrays)
    device = cupy.cuda.Device().id
    # a kernel given another GPU's pointer faults (or, with peer access, crawls)
    elsewhere = [a.device.id for a in arrays if a.device.id != device]
    if elsewhere:
        raise ValueError(
            f"{kernel}: an argument is on cuda:{elsewhere[0]} but the current device is "
            f"cuda:{device}; call gpunet.set_device('cuda:{elsewhere[0]}') or move the arrays")
    function = _module(cupy, name, numpy.dtype(dtype).name, device).get_function(kernel)
    function(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)


def address(array) -> int:
    """The device address of a CuPy array (of a NumPy one under the tests' emulation)."""
    return array.data.ptr if hasattr(array.data, "ptr") else array.ctypes.data


def new_output(xp, shape, dtype):
    """An uninitialised output (NaN-filled under ``GPUNET_POISON=1``, the tests': an
    element a kernel forgets to write shows up)."""
    out = xp.empty(shape, dtype=dtype)
    if config.get("poison"):
        out.fill(numpy.nan if numpy.dtype(dtype).kind == "f" else -1)
    return out


def _device_id(xp) -> int:
    return xp.cuda.Device().id if xp is not numpy else -1


# The device tables of the shapes seen last, least recently used dropped first: a
# program that meets ever new shapes (a varying batch, a search over sizes) must not
# grow device memory without end. Dropping one a queued kernel still reads is safe:
# CuPy's pool hands its memory out again only in stream order, after that kernel.
TABLES_KEPT = 4096
_tables: collections.OrderedDict = collections.OrderedDict()


def table(xp, key: tuple, build, dtype) -> object:
    """A per-shape table on the device, ``build()`` (a NumPy array) built and copied
    once per ``key``, dtype and device: conv2d's filter taps, batch norm's merge
    weights. At most :data:`TABLES_KEPT` are kept."""
    full_key = (xp.__name__, key, numpy.dtype(dtype).name, _device_id(xp))
    found = _tables.get(full_key)
    if found is None:
        found = _tables[full_key] = xp.asarray(numpy.ascontiguousarray(build(), dtype=dtype))
        while len(_tables) > TABLES_KEPT:
            _tables.popitem(last=False)
    else:
        _tables.move_to_end(full_key)
    return found


GEOMETRIES_KEPT = 4096  # per-shape geometry structs cached (least recently used dropped)


@lru_cache(maxsize=GEOMETRIES_KEPT)
def geometry(fields: tuple[str, ...], values: tuple[int, ...]) -> numpy.void:
    """A kernel's geometry struct (``ConvGeometry``, ``PoolGeometry``,
    ``ChannelGeometry`` of kernels/*.cu), passed by value: a read-only NumPy scalar of
    one int32 field per name of ``fields`` (the struct's, in its order; a C struct of
    ints has no padding), whose bytes CuPy copies into the launch's parameters, so a
    shape needs no device allocation or copy. One per shape (a bounded cache)."""
    if len(fields) != len(values):
        raise ValueError(f"geometry: {len(fields)} fields {fields} but {len(values)} values")
    struct = numpy.array(tuple(int(v) for v in values),
                         numpy.dtype([(name, numpy.int32) for name in fields]))
    struct.flags.writeable = False  # shared by every launch of the shape
    return struct[()]


class Launch(NamedTuple):
    """One kernel launch as a launcher plans it (``gpunet.cuda.batchnorm``'s and
    ``pool2d``'s ``*_plan`` functions): what the launcher passes to :func:`launch`, and
    what the CuPy test double records of it."""
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int = 0

    def run(self, name: str, dtype, args) -> None:
        launch(name, self.kernel, dtype, self.grid, self.block, args, self.shared_mem)
