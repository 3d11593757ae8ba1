"""Run gpunet's CUDA kernels on the CPU: each .cu file compiled as C++ with
emulate.h, each CUDA thread an OS thread, launched through ctypes.

``emulated_launch`` has the signature of ``gpunet.cuda.runtime.launch``; with it
patched in, the real launchers run on NumPy arrays end to end.
"""
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading

import numpy

from gpunet.cuda.runtime import compile_options, kernel_dir

HERE = os.path.dirname(os.path.abspath(__file__))


def compiler():
    return shutil.which("g++")


@functools.cache
def _library(name: str, dtype: str):
    options = [o for o in compile_options(dtype) if o.startswith(("-D", "-I"))]
    src = os.path.join(kernel_dir(), f"{name}.cu")
    digest = hashlib.sha256()
    for path in (src, os.path.join(kernel_dir(), "common.cuh"), os.path.join(HERE, "emulate.h"),
                 os.path.join(HERE, "harness.cpp")):
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(" ".join(options).encode())
    out = os.path.join(tempfile.gettempdir(), f"gpunet-emu-{name}-{dtype}-"
                                              f"{digest.hexdigest()[:16]}.so")
    if not os.path.exists(out):
        cmd = [compiler(), "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w",
               "-include", os.path.join(HERE, "emulate.h"), *options, "-x", "c++", src,
               os.path.join(HERE, "harness.cpp"), "-o", out + ".tmp"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        os.replace(out + ".tmp", out)
    return ctypes.CDLL(out)


def _ctype(arg):
    if isinstance(arg, numpy.ndarray):
        assert arg.flags.c_contiguous, "kernels need contiguous arrays"
        return ctypes.c_void_p(arg.ctypes.data)
    if isinstance(arg, numpy.uint64):  # gpunet.cuda.NULL
        return ctypes.c_void_p(int(arg) or None)
    if isinstance(arg, numpy.int32):
        return ctypes.c_int32(int(arg))
    if isinstance(arg, numpy.int64):
        return ctypes.c_int64(int(arg))
    raise TypeError(f"unsupported kernel argument {type(arg).__name__}")


launches: list = []  # (kernel, grid, block) of every launch, for tests that inspect them


def emulated_launch(name, kernel, dtype, grid, block, args, shared_mem=0):
    assert shared_mem <= 1 << 16
    library = _library(name, numpy.dtype(dtype).name)
    function = getattr(library, kernel)
    c_args = [_ctype(a) for a in args]
    launches.append((kernel, tuple(grid), tuple(block)))
    gx, gy, gz = grid
    for z in range(gz):
        for y in range(gy):
            for x in range(gx):
                library.emu_begin_block(gx, gy, gz, *block)
                _run_block(library, function, c_args, (x, y, z), block)


def _run_block(library, function, c_args, block_index, block):
    """All threads of one block, concurrently (they meet at __syncthreads)."""
    bx, by, bz = block
    errors = []

    def run(tid):
        try:
            library.emu_set_thread(*block_index, tid % bx, (tid // bx) % by, tid // (bx * by))
            function(*c_args)
        except Exception as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(bx * by * bz)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
