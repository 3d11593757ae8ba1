"""Loading and launching gpunet's CUDA kernels (``kernels/*.cu``).

Each launcher module (``conv2d``, ``pool2d``, ``batchnorm``) validates its
inputs, makes them contiguous (raw kernels ignore strides), allocates outputs,
computes the grid and calls :func:`launch`. ``launch`` compiles a source file
once per (device, dtype) with ``RawModule`` and caches it; the tests replace it
with a CPU emulation, so everything up to the kernel call is shared code.
"""
from .runtime import (
                      BLOCK,
                      allow_tf32,
                      ceil_div,
                      geometry,
                      kernel_dir,
                      kernels_enabled,
                      launch,
                      new_output,
                      set_allow_tf32,
                      set_kernels_enabled,
                      uses_kernels,
)

__all__ = ["BLOCK", "allow_tf32", "ceil_div", "geometry", "kernel_dir",
           "kernels_enabled", "launch", "new_output", "set_allow_tf32",
           "set_kernels_enabled", "uses_kernels"]
