"""One small launch of each kernel of one file (conv2d, pool2d, batchnorm: forward
and backward; optim: optimizer steps and zero_grad), in float32: what
``compute-sanitizer`` (memcheck, racecheck, synccheck) runs in bench/gpu_check.py,
one file per process.
Exits 1 if a kernel disagrees with the xp path.

    python bench/sanitize_kernels.py conv2d
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_stages  # noqa: E402

if sys.argv[1:] not in ([name] for name in gpu_stages.KERNEL_FILES):
    sys.exit(f"usage: sanitize_kernels.py {{{','.join(gpu_stages.KERNEL_FILES)}}}")

import cupy  # noqa: E402

# Off before the first allocation: the pool hands out pieces of large chunks, and
# memcheck only sees a chunk's bounds, so a read past an array inside one passes
cupy.cuda.set_allocator(None)
rows = [gpu_stages.check_family(family, "float32")
        for family in gpu_stages.KERNEL_FILES[sys.argv[1]]]
for row in rows:
    print(row["family"], "ok" if row["ok"] else f"FAILED {row.get('error', row)}")
sys.exit(0 if all(row["ok"] for row in rows) else 1)
