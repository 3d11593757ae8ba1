"""``cupy.RawModule`` of the double: NVRTC compiles, the CPU emulator runs.

The source is compiled as CuPy compiles it on a GPU (``real_cupy.py``): a cubin
for sm_80 and for sm_90, so a source NVRTC rejects fails here too, and PTX for
sm_90, read for what a launch must respect (parameter sizes, ``.maxntid`` from
``__launch_bounds__``, static shared memory). Each launch is checked against
those and the device's limits before ``tests/cuda_emulator`` runs it on the
arrays' memory.
"""
from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

import numpy

from . import _core, _manifest
from ._core import ndarray
from .cuda import runtime

TARGETS = ("sm_80", "sm_90", "compute_90")
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_THREADS = 1024
MAX_SHARED = 48 * 1024  # without cudaFuncSetAttribute, which gpunet does not call
_PTX_BYTES = {"8": 1, "16": 2, "32": 4, "64": 8}
# `.param .u64 name`, or a struct by value: `.param .align 4 .b8 name[12]`
_PARAM = r"\.param\s+(?:\.align\s+\d+\s+)?\.[busf](\d+)[^\n,]*?(?:\[(\d+)\])?\s*(?:,|$)"

launches: list = []  # (kernel, grid, block, shared_mem) of every launch, for tests


class CompileException(Exception):
    """NVRTC rejected the source (CuPy raises cupy.cuda.compiler.CompileException)."""


@dataclass(frozen=True)
class KernelInfo:
    param_bytes: tuple[int, ...]
    max_threads: int | None
    static_shared: int


def parse_ptx(ptx: str) -> dict[str, KernelInfo]:
    """Each ``.entry`` of PTX with its parameter sizes and launch limits."""
    first = ptx.find(".entry")
    # __shared__ arrays of inlined functions are module-level in PTX; a kernel gets
    # those it names (ptxas allocates per kernel what the kernel references)
    module_shared = {name: int(n) for name, n in re.findall(
        r"^\s*\.shared\s+\.align\s+\d+\s+\.b8\s+(\w+)\[(\d+)\]", ptx[:first], re.M)}
    kernels = {}
    entries = list(re.finditer(r"\.entry\s+(\w+)\s*\(([^)]*)\)", ptx))
    for i, match in enumerate(entries):
        end = entries[i + 1].start() if i + 1 < len(entries) else len(ptx)
        body = ptx[match.end():end]
        sizes = [_PTX_BYTES[bits] * (int(count) if count else 1) for bits, count in
                 re.findall(_PARAM, match.group(2), re.M)]
        header = body[:body.find("{")]
        maxntid = re.search(r"\.maxntid\s+(\d+),\s*(\d+),\s*(\d+)", header)
        static = sum(int(n) for n in re.findall(r"\.shared\s+\.align\s+\d+\s+\.b8\s+\w+\[(\d+)\]",
                                                body))
        kernels[match.group(1)] = KernelInfo(
            tuple(sizes), int(numpy.prod([int(v) for v in maxntid.groups()])) if maxntid else None,
            static + sum(n for name, n in module_shared.items()
                         if re.search(rf"\b{re.escape(name)}\b", body)))
    return kernels


def compile_with_nvrtc(code: str, options: tuple[str, ...]) -> dict:
    key = hashlib.sha256((code + "\0" + "\0".join(options)).encode()).hexdigest()
    answer = _manifest.cached("nvrtc", key, {"do": "compile", "source": code,
                                             "options": list(options),
                                             "targets": list(TARGETS)})
    if "error" in answer:
        raise CompileException(answer["error"])
    return answer


class RawModule:
    def __init__(self, code: str, options: tuple[str, ...]):
        from tests import cuda_emulator
        answer = compile_with_nvrtc(code, options)
        self.cubins = {t: base64.b64decode(answer["outputs"][t]) for t in TARGETS[:2]}
        ptx = base64.b64decode(answer["outputs"]["compute_90"]).decode()
        self.kernels = parse_ptx(ptx)
        self.library = cuda_emulator.build(code, options)
        missing = set(self.kernels) ^ set(self.library.signatures)
        assert not missing, f"PTX entries and parsed kernels differ: {sorted(missing)}"

    def get_function(self, name: str) -> RawKernel:
        if name not in self.kernels:
            raise runtime.CUDARuntimeError(500)  # CUDA_ERROR_NOT_FOUND, as cuModuleGetFunction
        return RawKernel(self, name)


def _dim3(value, what: str) -> tuple[int, int, int]:
    if isinstance(value, (int, numpy.integer)):
        value = (value,)
    value = tuple(int(v) for v in value)
    if not 1 <= len(value) <= 3:
        raise ValueError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value}")
    return value + (1,) * (3 - len(value))


def _argument(arg, where):
    """What CuPy passes for ``arg`` (cupy/cuda/function.pyx, ``_pointer``): a device
    pointer, or the bytes of a NumPy scalar (a structured one, ``numpy.void``, is a
    struct by value) or of a NumPy array of one element; nothing else (``CScalar``:
    a tuple or list is no struct)."""
    from tests.cuda_emulator import Pointer
    if isinstance(arg, ndarray):
        if arg._device != _core.current_device():
            # a pointer into another GPU's memory, without peer access: the kernel faults
            raise runtime.CUDARuntimeError(
                f"{where} lives on device {arg._device}, the kernel runs on device "
                f"{_core.current_device()} (cudaErrorIllegalAddress)")
        a = arg._a
        return Pointer(a.ctypes.data, a.dtype.name, a.size, a.flags.c_contiguous)
    if isinstance(arg, numpy.ndarray):
        if arg.size != 1:
            raise TypeError(
                f"{where}: You are trying to pass a numpy.ndarray of shape {arg.shape} as a "
                "kernel parameter. Only numpy.ndarrays of size one can be passed by value. If "
                "you meant to pass a pointer to __global__ memory, you need to pass a "
                "cupy.ndarray instead.")
        return arg.reshape(())[()]  # its bytes, by value (CNumpyArray)
    if isinstance(arg, numpy.generic):
        return arg
    if isinstance(arg, bool):
        return numpy.bool_(arg)
    if isinstance(arg, int):
        return numpy.int64(arg)
    if isinstance(arg, float):
        return numpy.float64(arg)
    raise TypeError(f"{where}: Unsupported type {type(arg)}")


class RawKernel:
    def __init__(self, module: RawModule, name: str):
        self.module, self.name = module, name
        self.info = module.kernels[name]

    @property
    def max_threads_per_block(self):
        return self.info.max_threads or MAX_THREADS

    def __call__(self, grid, block, args, *, shared_mem=0, enable_cooperative_groups=False):
        from tests import cuda_emulator
        grid, block = _dim3(grid, "grid"), _dim3(block, "block")
        self._check_launch(grid, block, int(shared_mem))
        grid = tuple(max(1, g) for g in grid)  # as CuPy's Function.__call__
        if not isinstance(args, tuple):
            raise TypeError(f"{self.name}: args must be a tuple, got {type(args).__name__}")
        converted = [_argument(a, f"{self.name} argument {i}") for i, a in enumerate(args)]
        self._check_sizes(converted)
        launches.append((self.name, grid, block, int(shared_mem)))
        cuda_emulator.launch(self.module.library, self.name, grid, block, converted,
                             int(shared_mem))

    def _check_launch(self, grid, block, shared_mem):
        name = self.name
        for what, dims, limits in (("grid", grid, MAX_GRID), ("block", block, MAX_BLOCK)):
            for axis, size, limit in zip("xyz", dims, limits):
                # CuPy's Function launches max(1, grid[i]) blocks: a zero grid runs one
                lowest = 0 if what == "grid" else 1
                if not lowest <= size <= limit:
                    raise runtime.CUDARuntimeError(
                        f"{name}: {what} {dims}: {what}Dim.{axis} = {size} is outside 1..{limit} "
                        "(cudaErrorInvalidConfiguration)")
        threads = block[0] * block[1] * block[2]
        limit = min(MAX_THREADS, self.info.max_threads or MAX_THREADS)
        if threads > limit:
            raise runtime.CUDARuntimeError(
                f"{name}: block {block} has {threads} threads, over the {limit} allowed"
                + (" by __launch_bounds__" if self.info.max_threads else "")
                + " (CUDA_ERROR_INVALID_VALUE)")
        if shared_mem < 0 or self.info.static_shared + shared_mem > MAX_SHARED:
            raise runtime.CUDARuntimeError(
                f"{name}: {self.info.static_shared} bytes of static and {shared_mem} of dynamic "
                f"shared memory exceed the {MAX_SHARED} a block may use without opting in")

    def _check_sizes(self, converted):
        from tests.cuda_emulator import LaunchError, Pointer
        expected = self.info.param_bytes
        if len(converted) != len(expected):
            raise LaunchError(f"{self.name} takes {len(expected)} arguments (PTX), got "
                              f"{len(converted)}")
        for i, (arg, size) in enumerate(zip(converted, expected)):
            got = 8 if isinstance(arg, Pointer) else arg.itemsize
            if got != size:
                what = ("a pointer" if isinstance(arg, Pointer)
                        else f"a numpy.void of {len(arg.dtype.fields or ())} fields"
                        if isinstance(arg, numpy.void) else f"a {arg.dtype} scalar")
                raise LaunchError(f"{self.name} argument {i}: the kernel's parameter is {size} "
                                  f"bytes (PTX), but {what} of {got} bytes was passed")
