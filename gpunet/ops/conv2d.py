"""2-D convolution (cross-correlation, as ``Conv2d``) by im2col + GEMM, and the
textbook convolution with the flipped kernel.

Shapes: x ``(N, C, H, W)``, weight ``(K, C / groups, R, S)``, y ``(N, K, OH, OW)``
with ``OH = floor((H + pad_top + pad_bottom - dilation_h (R - 1) - 1) / stride_h) + 1``.
A dilated kernel reads taps ``dilation`` apart; ``groups`` splits the channels and
the filters into that many independent convolutions (filters ``g K / groups`` on
channels ``g C / groups`` onwards), run one after the other by every path.

im2col copies the window of every output pixel into columns ``(N, C, R, S, OH,
OW)``, seen as ``(N, C*R*S, OH*OW)``: the convolution is then one GEMM per image,
``y[n] = W cols[n]`` with ``W`` as ``(K, C*R*S)``, already in NCHW order. The
backward is the same product transposed: ``dW = sum_n dy[n] cols[n]^T``, and the
columns' gradient ``W^T dy[n]`` goes back onto the input pixels by
:func:`col2im`, the adjoint of :func:`im2col`. This is
the reference; NumPy arrays run :mod:`gpunet.cpu.conv2d` (Winograd, a CHWN
layout, thread chunks) and CuPy arrays gpunet's CUDA kernels
(:mod:`gpunet.cuda.conv2d`, ``kernels/conv2d.cu``).
"""
from __future__ import annotations

from .. import _checks
from .._context import (
    Context,
    check_window,
    crop,
    dilated_kernel,
    normalize_padding,
    output_hw,
    pad_input,
    window_offsets,
)
from ..backend import common_array_module
from ..cpu import conv2d as cpu_conv2d
from ..cuda import conv2d as cuda_conv2d
from .common import route


def im2col(x, kernel, stride, pads, dilation=(1, 1)):
    """Columns ``(N, C, R, S, OH, OW)``: ``cols[n, c, r, s, i, j] =
    x_padded[n, c, i * stride_h + r * dilation_h, j * stride_w + s * dilation_w]``,
    one copy per kernel offset."""
    xp = common_array_module(x=x)
    out_hw = output_hw(x.shape, dilated_kernel(kernel, dilation), stride, pads)
    x_padded = pad_input(x, pads)
    cols = xp.empty((*x.shape[:2], *kernel, *out_hw), dtype=x.dtype)
    for offset, rows, columns in window_offsets(kernel, stride, out_hw, dilation):
        r, s = divmod(offset, kernel[1])
        cols[:, :, r, s] = x_padded[:, :, rows, columns]
    return cols


def col2im(cols, x_shape, stride, pads, dilation=(1, 1)):
    """The adjoint of :func:`im2col`: every column entry added back onto the input
    pixel it was copied from (overlapping windows add up)."""
    xp = common_array_module(cols=cols)
    n, c, kernel_h, kernel_w, oh, ow = cols.shape
    (pt, pb), (pl, pr) = pads
    x_padded = xp.zeros((n, c, x_shape[2] + pt + pb, x_shape[3] + pl + pr), dtype=cols.dtype)
    for offset, rows, columns in window_offsets((kernel_h, kernel_w), stride, (oh, ow),
                                                dilation):
        r, s = divmod(offset, kernel_w)
        x_padded[:, :, rows, columns] += cols[:, :, r, s]
    return crop(x_padded, x_shape, pads)


class Im2colContext(Context):
    __slots__ = ("cols", "weight", "x_shape", "stride", "pads", "has_bias", "dilation")

    def __init__(self, cols, weight, x_shape, stride, pads, has_bias, dilation=(1, 1)):
        super().__init__("conv2d", (x_shape[0], weight.shape[0], *cols.shape[4:]))
        self.cols, self.weight, self.x_shape = cols, weight, x_shape
        self.stride, self.pads, self.has_bias = stride, pads, has_bias
        self.dilation = dilation

    def _backward(self, dy, input_grad):
        """``dW = sum_n dy[n] cols[n]^T``, ``db = sum dy``, ``dx = col2im(W^T dy)``."""
        xp = common_array_module(dy=dy, weight=self.weight)
        # explicit sizes, no -1: an empty batch or filter bank has no size to infer
        crs = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
        cols = self.cols.reshape(self.cols.shape[0], crs, dy.shape[2] * dy.shape[3])
        dy3 = dy.reshape(dy.shape[0], dy.shape[1], dy.shape[2] * dy.shape[3])  # (N, K, OH*OW)
        dweight = (dy3 @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(self.weight.shape)
        dbias = dy3.sum(axis=(0, 2)) if self.has_bias else None
        if not input_grad:
            return None, dweight, dbias
        dcols = self.weight.reshape(self.weight.shape[0], crs).T @ dy3  # (N, C*R*S, OH*OW)
        dx = col2im(dcols.reshape(self.cols.shape), self.x_shape, self.stride, self.pads,
                    self.dilation)
        return xp.ascontiguousarray(dx), dweight, dbias


class GroupedContext(Context):
    """The contexts of a grouped convolution's groups: the backward runs each on its
    share of ``dy`` and joins dx along the channels, dweight and dbias along the
    filters."""

    __slots__ = ("contexts", "x_shape", "has_bias")

    def __init__(self, contexts, out_shape, x_shape, has_bias):
        super().__init__("conv2d", out_shape)
        self.contexts, self.x_shape, self.has_bias = contexts, x_shape, has_bias

    def _backward(self, dy, input_grad):
        xp = common_array_module(dy=dy)
        per_group = dy.shape[1] // len(self.contexts)
        grads = [ctx.backward(xp.ascontiguousarray(dy[:, g * per_group:(g + 1) * per_group]),
                              input_grad) for g, ctx in enumerate(self.contexts)]
        dx = xp.concatenate([g[0] for g in grads], axis=1) if input_grad else None
        dweight = xp.concatenate([g[1] for g in grads], axis=0)
        dbias = xp.concatenate([g[2] for g in grads]) if self.has_bias else None
        return dx, dweight, dbias


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, use_kernels=None,
                   algorithm=None, dilation=1, groups=1, *, where="conv2d", x_name="x"):
    """Cross-correlation ``y[n,k] = sum_c,r,s W[k,c,r,s] x[n,c,oh*s+r*d,ow*s+s'*d] + b[k]``
    over the ``C / groups`` channels of filter ``k``'s group (PyTorch's
    ``torch.nn.functional.conv2d``, its ``dilation`` and ``groups`` included).

    Returns ``(y, ctx)``; ``ctx.backward(dy, input_grad=True)`` gives ``(dx, dweight,
    dbias)`` (``dbias`` ``None`` without a bias). CuPy arrays go to the CUDA kernels
    unless ``use_kernels=False`` or ``GPUNET_KERNELS=0``; NumPy arrays to
    :mod:`gpunet.cpu.conv2d` unless ``GPUNET_CPU_ACCEL=0``, where ``algorithm``
    picks ``"im2col"``, ``"im2col_chwn"`` (both exact to float rounding) or
    ``"winograd"`` (stride 1, square kernels; 2-4x fewer multiplications, relative
    error about 1e-5 in float32), ``None`` letting it choose.

    ``groups > 1`` runs the groups one after the other through the same path, on
    their slices of ``x``, ``weight`` and ``bias``. ``dilation > 1``: the CPU
    accelerators have no dilation, so NumPy arrays take this file's im2col path
    (``algorithm`` must then be ``None``); the CUDA kernels run the dilated filter
    with zeros between its taps (:func:`gpunet.cuda.conv2d.forward`).

    Every argument is checked here, once: ``where`` and ``x_name`` name the caller
    and ``x`` in the error messages (``Conv2d`` passes its repr and ``"input"``).
    """
    _checks.float_array(where, x_name, x)
    _checks.float_array(where, "weight", weight)
    xp = common_array_module(x=x, weight=weight, bias=bias)
    _checks.rank(where, x_name, x, 4, "(N, C, H, W)")
    _checks.rank(where, "weight", weight, 4, "(K, C / groups, R, S)")
    _checks.same_dtype(where, **{x_name: x}, weight=weight, bias=bias)
    groups = _checks.positive_int("groups", groups)
    dilation = _checks.pair("dilation", dilation)
    if x.shape[1] % groups or weight.shape[0] % groups:
        raise ValueError(
            f"groups: expected a divisor of in_channels and out_channels, got groups={groups} "
            f"for {x.shape[1]} channels (x shape {tuple(x.shape)}) and {weight.shape[0]} "
            f"filters (weight shape {tuple(weight.shape)})")
    if x.shape[1] != weight.shape[1] * groups:
        raise ValueError(
            f"{where}: {x_name} has {x.shape[1]} channels (shape {tuple(x.shape)}) but weight "
            f"expects {weight.shape[1] * groups} (shape {tuple(weight.shape)}, "
            f"groups={groups}): expected {weight.shape[1] * groups} channels, "
            f"got {x.shape[1]}")
    if bias is not None:
        _checks.shape(where, "bias", bias, (weight.shape[0],))
    stride = _checks.pair("stride", stride)
    kernel = tuple(weight.shape[2:])
    window = dilated_kernel(kernel, dilation)
    pads = normalize_padding(padding, window, stride)
    check_window(where, x.shape, window, pads)
    out_hw = output_hw(x.shape, window, stride, pads)
    if algorithm is not None:
        _check_algorithm(algorithm, xp, stride, kernel)
        if dilation != (1, 1):
            raise ValueError(f"algorithm={algorithm!r} picks a CPU accelerator, which has no "
                             f"dilation; expected algorithm=None with dilation={dilation}")
    if groups == 1:
        return _conv2d(xp, x, weight, bias, stride, pads, out_hw, dilation, use_kernels,
                       algorithm)
    c, k = x.shape[1] // groups, weight.shape[0] // groups
    outputs, contexts = [], []
    for g in range(groups):
        y, ctx = _conv2d(xp, x[:, g * c:(g + 1) * c], weight[g * k:(g + 1) * k],
                         None if bias is None else bias[g * k:(g + 1) * k], stride, pads,
                         out_hw, dilation, use_kernels, algorithm)
        outputs.append(y)
        contexts.append(ctx)
    y = xp.concatenate(outputs, axis=1)
    return y, GroupedContext(contexts, y.shape, tuple(x.shape), bias is not None)


def _conv2d(xp, x, weight, bias, stride, pads, out_hw, dilation, use_kernels, algorithm):
    """One group: ``(y, ctx)`` by the implementation :func:`route` picks."""
    implementation = route(xp, use_kernels, cuda_conv2d.fits(
        x.shape, (*weight.shape[:2], *dilated_kernel(weight.shape[2:], dilation)), out_hw))
    if implementation == "cuda":
        return cuda_conv2d.forward(x, weight, bias, stride, pads, out_hw, dilation)
    if (implementation == "cpu" or algorithm is not None) and dilation == (1, 1):
        return cpu_conv2d.forward(x, weight, bias, stride, pads, out_hw, algorithm)
    # the output first: a batch too large for the device fails before the copies
    y = xp.empty((x.shape[0], weight.shape[0], out_hw[0] * out_hw[1]), dtype=x.dtype)
    kernel = tuple(weight.shape[2:])
    cols = im2col(x, kernel, stride, pads, dilation)
    crs = weight.shape[1] * kernel[0] * kernel[1]  # no -1: an empty batch has no size to infer
    xp.matmul(weight.reshape(weight.shape[0], crs), cols.reshape(x.shape[0], crs, y.shape[2]),
              out=y)
    if bias is not None:
        y += bias[:, None]
    return (y.reshape(x.shape[0], weight.shape[0], *out_hw),
            Im2colContext(cols, weight, tuple(x.shape), stride, pads, bias is not None,
                          dilation))


def _check_algorithm(algorithm, xp, stride, kernel):
    if algorithm not in cpu_conv2d.ALGORITHMS:
        raise ValueError(f"algorithm: expected None or one of {cpu_conv2d.ALGORITHMS}, "
                         f"got {algorithm!r}")
    if xp.__name__ != "numpy":
        raise ValueError(f"algorithm={algorithm!r} picks a CPU algorithm; it needs NumPy "
                         f"arrays, got {xp.__name__} arrays")
    if algorithm == "winograd" and (stride != (1, 1) or kernel[0] != kernel[1]):
        raise ValueError(f"conv2d: algorithm='winograd' needs stride 1 and a square "
                         f"kernel, got stride={stride}, kernel={kernel}")


def correlate2d(image, kernel, mode: str = "valid"):
    """2-D cross-correlation of one image with one kernel (what CNNs call convolution).

    ``mode``: ``"valid"`` (no padding), ``"same"`` (output the input's size) or
    ``"full"`` (every overlap, padding ``f - 1``).
    """
    xp = common_array_module(image=image, kernel=kernel)
    for name, a in (("image", image), ("kernel", kernel)):
        if a.ndim != 2:
            raise ValueError(f"correlate2d: {name} must be 2-D, got shape {tuple(a.shape)}")
    dtype = xp.result_type(image.dtype, kernel.dtype, xp.float32)
    paddings = {"valid": 0, "same": "same",
                "full": (kernel.shape[0] - 1, kernel.shape[1] - 1)}
    if mode not in paddings:
        raise ValueError(f"mode: expected 'valid', 'same' or 'full', got {mode!r}")
    y, _ = conv2d_forward(image[None, None].astype(dtype), kernel[None, None].astype(dtype),
                          padding=paddings[mode])
    return y[0, 0]


def convolve2d(image, kernel, mode: str = "valid"):
    """True 2-D convolution, as in a maths textbook: the kernel is flipped in both
    axes before sliding. Unlike cross-correlation it is associative (in ``"full"``
    mode): ``convolve2d(convolve2d(A, B, "full"), C, "full") ==
    convolve2d(A, convolve2d(B, C, "full"), "full")``."""
    return correlate2d(image, kernel[::-1, ::-1], mode)
