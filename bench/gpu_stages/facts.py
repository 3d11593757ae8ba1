"""The facts stage: the GPU, the versions, and the two ceilings the timings are
measured against."""
from __future__ import annotations

import subprocess
import sys

import numpy

from .common import StageContext, cuda_tool


def stage_facts(ctx: StageContext) -> None:
    """The GPU, the versions, and two measured ceilings: device-to-device copy GB/s
    and float32 GEMM TFLOP/s (TF32 off: CuPy's default). The ceilings are measured
    and recorded before PyTorch is imported: a cold import of it can take the whole
    budget, and the timings' ``fraction_of_ceiling`` needs them."""
    import cupy

    from gpunet.benchmarks import cuda_torch, median_ms
    sync = cupy.cuda.Device().synchronize
    props = cupy.cuda.runtime.getDeviceProperties(0)
    ctx.emit(gpu=props["name"].decode(), compute_capability=f"{props['major']}.{props['minor']}",
             memory_gib=round(props["totalGlobalMem"] / 2**30, 1),
             multiprocessors=props["multiProcessorCount"],
             cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
             cuda_driver=cupy.cuda.runtime.driverGetVersion(), cupy=cupy.__version__,
             numpy=numpy.__version__, python=sys.version.split()[0])
    repeat = 2 if ctx.dry else 10
    n = (2**18 if ctx.dry else 2**28) // 4  # float32 values: 1 MiB / 1 GiB
    a, b = cupy.ones(n, numpy.float32), cupy.empty(n, numpy.float32)
    ms = median_ms(lambda: b.__setitem__(Ellipsis, a), repeat, sync)
    ctx.emit(copy_gbps=float(f"{2 * a.nbytes / (ms * 1e-3) / 1e9:.4g}"))
    size = 256 if ctx.dry else 8192
    m = cupy.ones((size, size), numpy.float32)
    ms = median_ms(lambda: m @ m, repeat, sync)
    ctx.emit(sgemm_tflops=float(f"{2 * size**3 / (ms * 1e-3) / 1e12:.4g}"))
    nvcc = cuda_tool("nvcc")
    if nvcc is not None:
        done = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
        ctx.emit(nvcc=(done.stdout.strip().splitlines() or [None])[-1])
    else:
        ctx.emit(nvcc=None)
    torch = cuda_torch()
    ctx.emit(torch=None if torch is None else torch.__version__,
             cudnn=None if torch is None else torch.backends.cudnn.version())

