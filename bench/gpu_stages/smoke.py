"""The smoke stage: every kernel compiled (each one loaded, and timed), launched
once on an awkward case and compared with the xp path; one process per kernel
file, ``CUDA_LAUNCH_BLOCKING=1``.

    python -m gpu_stages.smoke conv2d     # one file's rows, the stage's child
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy

from .common import (
    KERNEL_FILES,
    ROOT,
    StageContext,
    child_env,
    file_kernels,
    kernel_names,
    recorded_launches,
    run_bounded,
)


def check_family(family: str, dtype: str) -> dict:
    """Kernels against the xp path on the family's awkward case: the kernels
    launched, the worst error, or the error."""
    import cupy

    from gpunet.benchmarks import awkward
    from gpunet.cuda import runtime
    tf32 = family in awkward.TF32_FAMILIES and dtype == "float32"
    row = {"family": family, "dtype": dtype, "shape": awkward.family_shape(family)}
    with recorded_launches() as launched:
        row["kernels"] = launched
        try:
            runtime.set_allow_tf32(tf32)
            got = awkward.family_outputs(family, dtype, True, cupy.asarray)
            runtime.set_allow_tf32(False)
            ref = awkward.family_outputs(family, dtype, False, cupy.asarray)
            worst = 0.0
            for g, r in zip(got, ref):
                if g is None:
                    continue
                g, r = g.get().astype(numpy.float64), r.get().astype(numpy.float64)
                scale = max(float(numpy.abs(r).max()), 1.0)
                worst = max(worst, float(numpy.abs(g - r).max()) / scale)
            row["max_error"] = worst
            row["ok"] = bool(worst <= awkward.tolerance(dtype, awkward.longest_sum(family),
                                                        tf32))
        except Exception as exc:  # noqa: BLE001 - recorded with the kernel that was running
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000],
                       failing_kernel=launched[-1] if launched else None)
        finally:
            runtime.set_allow_tf32(False)
    return row


def compile_file(name: str, dtype: str) -> dict:
    """Compile ``kernels/<name>.cu`` for ``dtype`` and load each of its kernels,
    timed. CuPy's RawModule compiles lazily, at the first ``get_function``: making
    one proves nothing, and its compile time would land in the first launch."""
    import cupy

    from gpunet.cuda import runtime
    row = {"file": f"{name}.cu", "dtype": dtype}
    start = time.perf_counter()
    try:
        module = runtime._module(cupy, name, dtype, cupy.cuda.Device().id)
        for kernel in file_kernels(name):
            module.get_function(kernel)
        row.update(ok=True, kernels=len(file_kernels(name)),
                   seconds=round(time.perf_counter() - start, 2))
    except Exception as exc:  # noqa: BLE001 - recorded: NVRTC's log is the message
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:3000])
    return row


def smoke_file(name: str) -> None:
    """One kernel file in this process (the smoke stage's child): compiled in both
    precisions, then its cases checked; one JSON line per row on stdout, as it goes."""
    for dtype in ("float32", "float64"):
        print(json.dumps({"compiled": compile_file(name, dtype)}), flush=True)
    for family in KERNEL_FILES[name]:
        for dtype in ("float32", "float64"):
            print(json.dumps({"check": check_family(family, dtype)}, default=str), flush=True)


def stage_smoke(ctx: StageContext) -> None:
    # CUDA_LAUNCH_BLOCKING: a kernel's fault is raised by its own launch, which
    # check_family records, not by a later call in another kernel's row
    env = child_env(CUDA_LAUNCH_BLOCKING="1")
    compiled, checks, processes = [], [], {}
    for name in KERNEL_FILES:
        cmd = [sys.executable, "-m", "gpu_stages.smoke", name]
        timeout = ctx.left_s() - 1
        try:
            done = run_bounded(cmd, timeout, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
            out, err, code = done.stdout, done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:
            out, err, code = exc.stdout or "", exc.stderr or "", None
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        compiled += [row["compiled"] for row in rows if "compiled" in row]
        checks += [row["check"] for row in rows if "check" in row]
        processes[name] = {"exit_code": code}
        if code != 0:
            processes[name]["stderr_tail"] = err[-2000:] if code is not None else \
                f"stopped after {timeout:.0f} s"
            print(f"smoke: {name}.cu: exit {code}\n{err[-2000:]}", file=sys.stderr, flush=True)
        for row in rows:
            row = row.get("check") or row["compiled"]
            if not row["ok"]:
                print(f"smoke: {row}", file=sys.stderr, flush=True)
        ctx.emit(compiled=compiled, checks=checks, processes=processes)
    launched = {k for row in checks for k in row["kernels"]}
    ctx.emit(kernels_not_launched=sorted(kernel_names() - launched))
    if not all(c["ok"] for c in compiled + checks) or kernel_names() - launched or \
            any(p["exit_code"] != 0 for p in processes.values()):
        sys.exit(1)



if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in KERNEL_FILES:
        sys.exit(f"usage: python -m gpu_stages.smoke {{{','.join(KERNEL_FILES)}}}")
    smoke_file(sys.argv[1])
