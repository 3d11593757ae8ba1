"""Functional ops: ``<op>_forward(...) -> (y, ctx)`` and ``<op>_backward(dy, ctx)``.

Each is written once against the array module of its inputs (NumPy or CuPy).
Nothing here knows about layers.
"""
from .activation import log_softmax, sigmoid, softmax
from .batchnorm import batch_norm_backward, batch_norm_forward
from .conv2d import (
                   col2im,
                   conv2d_backward,
                   conv2d_forward,
                   convolve2d,
                   correlate2d,
                   im2col,
                   normalize_padding,
                   output_size,
)
from .lrn import lrn_backward, lrn_forward
from .pool2d import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward

__all__ = [
    "avg_pool2d_backward", "avg_pool2d_forward", "batch_norm_backward", "batch_norm_forward",
    "col2im", "conv2d_backward", "conv2d_forward", "convolve2d", "correlate2d", "im2col",
    "log_softmax", "lrn_backward", "lrn_forward", "max_pool2d_backward", "max_pool2d_forward",
    "normalize_padding", "output_size", "sigmoid", "softmax",
]
