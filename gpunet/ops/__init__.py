"""Functional ops: ``<op>_forward(...) -> (y, ctx)``, ``ctx.backward(dy,
input_grad=True) -> (dx, *parameter_grads)`` (see :class:`gpunet._context.Context`).

Each file holds an op's argument checks, its textbook path written once against
the array module of its inputs (NumPy or CuPy), and the dispatch: NumPy arrays to
the CPU accelerators in ``gpunet/cpu/<op>.py``, CuPy arrays to the CUDA launchers
in ``gpunet/cuda/<op>.py``. Nothing here knows about layers.
"""
from .._context import Context, normalize_padding, output_size
from .activation import log_softmax, sigmoid, softmax
from .batchnorm import batch_norm_forward
from .common import cpu_accelerators_enabled, cpu_scope, set_cpu_accelerators_enabled
from .conv2d import col2im, conv2d_forward, convolve2d, correlate2d, im2col
from .linear import linear_forward
from .lrn import lrn_forward
from .pool2d import adaptive_avg_pool2d_forward, avg_pool2d_forward, max_pool2d_forward

__all__ = [
    "Context", "adaptive_avg_pool2d_forward", "avg_pool2d_forward", "batch_norm_forward",
    "col2im", "conv2d_forward", "convolve2d", "cpu_accelerators_enabled", "cpu_scope",
    "correlate2d", "im2col", "linear_forward", "log_softmax", "lrn_forward",
    "max_pool2d_forward", "normalize_padding", "output_size", "sigmoid",
    "set_cpu_accelerators_enabled", "softmax",
]
