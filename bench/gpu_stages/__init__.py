"""The stages of ``bench/gpu_check.py``, one module each, each run in its own process.

A stage is ``stage_<name>(ctx)``; it records what it has found through
``ctx.emit(results)`` as it goes, so that a stage killed at its budget still
leaves its partial results in the report. ``ctx.dry`` is set when the CuPy test
double stands in for the GPU (``make gpu-check-dry``): shapes and repeat counts
shrink, and nothing it measures is a GPU figure. The stages import gpunet inside
their functions: gpu_check imports this package before it chooses the CuPy (the
real one or the double) that gpunet will find.
"""
from .common import (
    CUDA_HOMES,
    KERNEL_FILES,
    StageContext,
    cuda_tool,
    file_kernels,
    kernel_names,
    recorded_launches,
    run_bounded,
)
from .facts import stage_facts
from .sanitizer import stage_sanitizer
from .smoke import check_family, stage_smoke
from .tests import junit_counts, stage_tests
from .timings import stage_timings
from .training import stage_training

STAGES = {"facts": stage_facts, "smoke": stage_smoke, "tests": stage_tests,
          "sanitizer": stage_sanitizer, "training": stage_training, "timings": stage_timings}

__all__ = ["CUDA_HOMES", "KERNEL_FILES", "STAGES", "StageContext", "check_family", "cuda_tool",
           "file_kernels", "junit_counts", "kernel_names", "recorded_launches", "run_bounded",
           "stage_facts", "stage_sanitizer", "stage_smoke", "stage_tests", "stage_timings",
           "stage_training"]
