"""The sanitizer stage: compute-sanitizer's memcheck, racecheck and synccheck over
bench/sanitize_kernels.py, one process per tool and kernel file."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from .common import BENCH, CUDA_HOMES, KERNEL_FILES, ROOT, StageContext, cuda_tool, run_bounded

# What one sanitized process should need when nothing is compiled: Python, CuPy and a
# CUDA context under instrumentation, kernels from CuPy's cache, one small launch
# each. An estimate: no GPU has run this stage yet; the first report's seconds will say.
RUN_FLOOR_S = 8.0
# Under this, a run cannot even start its Python: it is not started, and its row says so.
MIN_RUN_S = 1.0


def run_timeout(left_s: float, runs_left: int, floor_s: float = RUN_FLOOR_S) -> float:
    """The time the next of ``runs_left`` runs may take: all that is left but what
    the runs after it need at their floor (or at an even share, when the budget
    is too short for floors). An even share would stop a run that compiles its
    kernels first (the first conv2d run, with a cold cache) though the rest of the
    stage has time to spare; one second stays for the stage to write its rows
    (zero once that second is all that is left)."""
    usable = left_s - 1
    if usable <= 0:
        return 0.0
    reserve = min(floor_s, usable / runs_left)
    return usable - reserve * (runs_left - 1)


def stage_sanitizer(ctx: StageContext) -> None:
    """memcheck, racecheck and synccheck over one small launch of each kernel: one
    process per tool and kernel file, launches synchronous, so that a report names
    the kernel that made it."""
    sanitizer = cuda_tool("compute-sanitizer")
    if sanitizer is None:
        ctx.emit(error="compute-sanitizer is neither on PATH nor in "
                       + " or ".join(f"{home}/bin" for home in CUDA_HOMES))
        sys.exit(1)
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    runs = [(tool, name) for tool in ("memcheck", "racecheck", "synccheck")
            for name in KERNEL_FILES]
    bad = False
    for i, (tool, name) in enumerate(runs):
        timeout = run_timeout(ctx.left_s(), len(runs) - i)
        row = _sanitize(sanitizer, tool, name, timeout, env) if timeout >= MIN_RUN_S else \
            {"exit_code": None, "summary": f"not run: {max(timeout, 0):.1f} s of the stage's "
                                           "budget was left for it"}
        bad |= row["exit_code"] != 0
        ctx.emit(**{tool: dict(ctx.results.get(tool, {}), **{name: row})})
    if bad:
        sys.exit(1)


def _sanitize(sanitizer, tool, name, timeout, env) -> dict:
    """The row of one run: ``tool`` over one launch of each kernel of ``name``."""
    script = os.path.join(BENCH, "sanitize_kernels.py")
    try:
        done = run_bounded([sanitizer, "--tool", tool, "--error-exitcode", "1",
                            sys.executable, script, name], timeout, cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except subprocess.TimeoutExpired as exc:
        return {"exit_code": None, "summary": f"stopped after {timeout:.1f} s",
                "output_tail": (exc.stdout or "")[-3000:]}
    summary = re.findall(r"(?:ERROR|RACECHECK) SUMMARY: [^\n]*", done.stdout)
    row = {"exit_code": done.returncode, "summary": summary[-1] if summary else None}
    if done.returncode:
        row["output_tail"] = done.stdout[-3000:]
    return row

