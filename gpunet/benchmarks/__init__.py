"""What ``gpunet bench`` and ``pytest bench/`` time: layer forward+backward at the
shapes of LeNet-5, the CIFAR AlexNet, AlexNet-224 and VGG-16, and one training
step of LeNet-5 and of the CIFAR AlexNet; each beside its PyTorch twin when
PyTorch is installed. Also the peak-memory comparison.

One module a job: :mod:`.cases` (the case table and the work of each case),
:mod:`.twin` (PyTorch's twin of a model), :mod:`.runners` (each case done once by
either library), :mod:`.timing` (the side-by-side rounds, the table, the report,
and the GPU check's timer), :mod:`.peak_memory`, :mod:`.awkward` (the
awkward kernel shapes and the tolerance table of the tests and the GPU check).
``ratio`` is PyTorch's time over ours: above 1, gpunet is faster.
"""
from . import awkward, cases, peak_memory, runners, timing, twin
from .cases import CASES, LAYER_CASES, STEP_CASES, STEP_WORKLOADS, Case, step_flops
from .peak_memory import MEASURES, MEMORY_WORKLOADS, format_memory, memory, memory_child
from .runners import gpunet_runner, torch_runner
from .timing import (
    environment,
    format_table,
    make_row,
    median_ms,
    paired_ratio,
    run,
    save,
    time_side_by_side,
)
from .twin import cuda_torch, import_torch, torch_model, torch_twin, torch_unusable

__all__ = ["CASES", "LAYER_CASES", "MEASURES", "MEMORY_WORKLOADS", "STEP_CASES",
           "STEP_WORKLOADS", "Case", "awkward", "cases", "cuda_torch", "environment",
           "format_memory", "format_table", "gpunet_runner", "import_torch", "make_row",
           "median_ms", "memory", "memory_child", "paired_ratio", "peak_memory", "run",
           "runners", "save", "step_flops", "time_side_by_side", "timing", "torch_model",
           "torch_runner", "torch_twin", "torch_unusable", "twin"]
