"""Run gpunet's CUDA kernels on the CPU: each .cu file compiled as C++ with
emulate.h, each CUDA thread a fiber of one OS thread (harness.cpp), launched
through ctypes.

``emulated_launch`` has the signature of ``gpunet.cuda.runtime.launch`` and
takes NumPy arrays; the CuPy test double (``tests/cupy_double``) launches through
:func:`launch` with the addresses of its arrays. Both check the arguments
against the kernel's C signature first (count, pointer element types, scalar
types, structs of ints passed by value as a ``numpy.void`` of exactly their int32
fields), since the kernel would read garbage otherwise.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy

from gpunet.cuda.runtime import compile_options, source

HERE = os.path.dirname(os.path.abspath(__file__))

_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?'
                     r'(\w+)\s*\(([^)]*)\)')
_INT_STRUCT = re.compile(r"struct\s+(\w+)\s*\{\s*int\s+([\w\s,]+);\s*\}")
_SCALARS = {"float": "float32", "double": "float64", "int": "int32", "index_t": "int64",
            "long long": "int64", "unsigned": "uint32", "unsigned int": "uint32"}


@dataclass(frozen=True)
class Param:
    """One kernel parameter: ``dtype`` of the value, or of the elements pointed to
    (``None`` for a struct whose layout is unknown); ``count`` elements at least.
    ``struct``: the name of a struct of ``count`` ints passed by value (``dtype``
    int32), which takes a NumPy scalar of ``count`` int32 fields."""
    declaration: str
    pointer: bool
    dtype: str | None
    count: int = 1
    struct: str | None = None


def signatures(source: str, real: str) -> dict[str, tuple[Param, ...]]:
    """Each ``extern "C" __global__`` kernel of ``source`` and its parameters, with
    ``real_t`` and ``acc_t`` read as ``real`` (``"float"`` or ``"double"``)."""
    scalars = dict(_SCALARS, real_t=_SCALARS[real], acc_t=_SCALARS[real])
    int_structs = {name: len(fields.split(",")) for name, fields in _INT_STRUCT.findall(source)}
    result = {}
    for name, params in _KERNEL.findall(source):
        parsed = []
        for declaration in (p.strip() for p in params.split(",")):
            words = declaration.replace("*", " * ").split()
            pointer = "*" in words
            base = " ".join(w for w in words[:-1] if w not in ("const", "__restrict__", "*"))
            if base in int_structs:
                parsed.append(Param(declaration, pointer, "int32", int_structs[base],
                                    None if pointer else base))
            else:
                parsed.append(Param(declaration, pointer, scalars.get(base)))
        result[name] = tuple(parsed)
    return result


def compiler():
    return shutil.which("g++")


# -fno-gnu-unique: g++ otherwise binds the static storage behind the __shared__
# arrays of templates as STB_GNU_UNIQUE, which the loader merges across libraries
# (the float and double builds of one file), RTLD_LOCAL or not.
CXXFLAGS = ("-std=c++20", "-O2", "-shared", "-fPIC", "-fno-gnu-unique", "-w")


class Library:
    """A kernel source built for the CPU as a shared library of thunks, one per
    ``extern "C" __global__`` kernel. ``options`` are NVRTC's: the ``-D`` and
    ``-I`` among them apply (``-Dreal_t=`` also types the signatures)."""

    def __init__(self, source: str, options: tuple[str, ...]):
        options = [o for o in options if o.startswith(("-D", "-I"))]
        real = next((o.split("=", 1)[1] for o in options if o.startswith("-Dreal_t=")), "float")
        self.signatures = signatures(source, real)
        digest = hashlib.sha256("\0".join([source, *options, *CXXFLAGS]).encode())
        for path in (*_included_headers(options),
                     *(os.path.join(HERE, f) for f in ("emulate.h", "harness.cpp", "thunks.h"))):
            with open(path, "rb") as f:
                digest.update(f.read())
        out = os.path.join(tempfile.gettempdir(), f"gpunet-emu-{digest.hexdigest()[:20]}.so")
        if not os.path.exists(out):
            self._build(source, options, out)
        self.cdll = ctypes.CDLL(out)
        self.cdll.emu_launch.restype = ctypes.c_char_p
        self.cdll.emu_launch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)] + \
            [ctypes.c_uint] * 6 + [ctypes.c_size_t, ctypes.c_int]

    def _build(self, source, options, out):
        with tempfile.TemporaryDirectory() as tmp:
            unit = os.path.join(tmp, "kernels.cpp")
            with open(unit, "w") as f:
                f.write(source)
                f.write(f'\n#include "{HERE}/thunks.h"\n')
                f.write("".join(f"EMU_THUNK({kernel})\n" for kernel in self.signatures))
            cmd = [compiler(), *CXXFLAGS, "-include", os.path.join(HERE, "emulate.h"), *options,
                   unit, os.path.join(HERE, "harness.cpp"), "-o", f"{out}.{os.getpid()}.tmp"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"g++ failed on the kernel source:\n{done.stderr[-4000:]}")
            os.replace(f"{out}.{os.getpid()}.tmp", out)


def _included_headers(options):
    for option in options:
        if option.startswith("-I") and os.path.isdir(option[2:]):
            for name in sorted(os.listdir(option[2:])):
                if name.endswith((".cuh", ".h")):
                    yield os.path.join(option[2:], name)


@functools.cache
def build(source: str, options: tuple[str, ...]) -> Library:
    return Library(source, options)


def library(name: str, dtype) -> Library:
    """``kernels/<name>.cu`` built as gpunet's loader builds it for ``dtype`` (its
    headers inlined, as ``runtime.source`` hands it to ``RawModule``)."""
    return build(source(name), compile_options(numpy.dtype(dtype).name))


class LaunchError(RuntimeError):
    """What a GPU would refuse, or a kernel fault the emulator caught."""


@dataclass(frozen=True)
class Pointer:
    """A device pointer argument: the address and what it points to."""
    address: int
    dtype: str
    size: int
    contiguous: bool = True


def check_arguments(kernel: str, params: tuple[Param, ...], args) -> None:
    """Raise ``LaunchError`` unless ``args`` (``Pointer``s and NumPy scalars) fit
    ``params``: the count, each pointer's element type, contiguity and length,
    each scalar's exact type (a wrong size shifts every later argument), each
    struct passed by value a ``numpy.void`` of exactly its int32 fields."""
    if len(args) != len(params):
        raise LaunchError(f"{kernel} takes {len(params)} arguments, got {len(args)}")
    for i, (param, arg) in enumerate(zip(params, args)):
        where = f"{kernel} argument {i} ({param.declaration})"
        if param.pointer:
            if isinstance(arg, Pointer):
                if param.dtype is not None and arg.dtype != param.dtype:
                    raise LaunchError(f"{where}: expected an array of {param.dtype}, got "
                                      f"{arg.dtype}")
                if not arg.contiguous:
                    raise LaunchError(f"{where}: the array is not C-contiguous; a raw kernel "
                                      "ignores strides")
                if arg.size and arg.size < param.count:
                    raise LaunchError(f"{where}: expected at least {param.count} elements, "
                                      f"got {arg.size}")
            elif not (isinstance(arg, numpy.uint64) and int(arg) == 0):
                raise LaunchError(f"{where}: expected an array or a null pointer, got "
                                  f"{type(arg).__name__} {arg!r}")
        elif param.struct is not None:
            wrong = _struct_mismatch(param, arg)
            if wrong:
                raise LaunchError(f"{where}: expected a {param.struct} by value, a numpy.void "
                                  f"of {param.count} int32 fields ({4 * param.count} bytes), "
                                  f"got {wrong}")
        elif not isinstance(arg, numpy.generic) or arg.dtype.name != param.dtype:
            got = arg.dtype.name if isinstance(arg, numpy.generic) else type(arg).__name__
            raise LaunchError(f"{where}: expected a {param.dtype} scalar, got {got}")


def _struct_mismatch(param: Param, arg) -> str | None:
    """What is wrong with ``arg`` as the struct ``param`` passed by value (None: nothing):
    the kernel copies its bytes as ``count`` packed ints."""
    if isinstance(arg, Pointer):
        return f"an array of {arg.dtype} (a device pointer: the kernel would read the " \
               "address as its sizes)"
    if not isinstance(arg, numpy.void) or arg.dtype.fields is None:
        kind = arg.dtype.name if isinstance(arg, numpy.generic) else type(arg).__name__
        return f"a {kind} {'scalar' if isinstance(arg, numpy.generic) else 'value'}"
    fields = arg.dtype.fields
    if len(fields) != param.count:
        return f"a numpy.void of {len(fields)} fields"
    for name, (dtype, *_) in fields.items():
        if dtype != numpy.int32:
            return f"field {name!r} of {dtype}"
    offsets = sorted(offset for _, offset, *_ in fields.values())
    if offsets != list(range(0, 4 * param.count, 4)):
        return f"fields at bytes {offsets} (overlapping or apart)"
    if arg.itemsize != 4 * param.count:
        return f"a numpy.void of {arg.itemsize} bytes"
    return None


def _parameter_bytes(param: Param) -> int:
    """The bytes the kernel reads from the parameter's kernelParams cell."""
    if param.pointer:
        return 8
    if param.struct is not None:
        return 4 * param.count
    return numpy.dtype(param.dtype).itemsize if param.dtype else 0


def parameter_cell(kernel: str, i: int, param: Param, arg):
    """The kernelParams cell of argument ``i``: a pointer's address, or a scalar's or
    struct's bytes (at least 8, as a pointer's cell). The thunk copies the parameter
    out of it, so a cell shorter than the parameter is refused, not read past."""
    cell = (ctypes.c_void_p(arg.address) if isinstance(arg, Pointer)
            else ctypes.create_string_buffer(arg.tobytes(), max(8, arg.itemsize)))
    if ctypes.sizeof(cell) < _parameter_bytes(param):
        raise LaunchError(f"{kernel} argument {i} ({param.declaration}): the kernel reads "
                          f"{_parameter_bytes(param)} bytes, the argument holds "
                          f"{ctypes.sizeof(cell)}")
    return cell


_launch_count = 0


def launch(lib: Library, kernel: str, grid, block, args, shared_mem: int = 0) -> None:
    """Run ``kernel`` of ``lib`` on the CPU over ``grid`` blocks of ``block`` threads."""
    global _launch_count
    if kernel not in lib.signatures:
        raise LaunchError(f"the source has no kernel {kernel!r}")
    params = lib.signatures[kernel]
    check_arguments(kernel, params, args)
    storage, pointers = [], (ctypes.c_void_p * max(1, len(args)))()
    for i, (param, arg) in enumerate(zip(params, args)):
        cell = parameter_cell(kernel, i, param, arg)
        storage.append(cell)
        pointers[i] = ctypes.cast(ctypes.pointer(cell), ctypes.c_void_p)
    thunk = ctypes.cast(getattr(lib.cdll, f"emu_thunk_{kernel}"), ctypes.c_void_p)
    _launch_count += 1
    error = lib.cdll.emu_launch(thunk, pointers, *grid, *block, shared_mem, _launch_count % 2)
    if error:
        raise LaunchError(f"{kernel}: {error.decode()}")


launches: list = []  # (kernel, grid, block) of every launch, for tests that inspect them


def emulated_launch(name, kernel, dtype, grid, block, args, shared_mem=0):
    """``gpunet.cuda.runtime.launch`` for NumPy arrays: the launchers' calls run
    here unchanged."""
    converted = [Pointer(a.ctypes.data, a.dtype.name, a.size, a.flags.c_contiguous)
                 if isinstance(a, numpy.ndarray) else a for a in args]
    launches.append((kernel, tuple(grid), tuple(block)))
    launch(library(name, dtype), kernel, tuple(grid), tuple(block), converted, shared_mem)
