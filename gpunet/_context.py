"""What the ops (``gpunet/ops``) and their accelerators (``gpunet/cpu``, ``gpunet/cuda``)
share, on the ground floor so that the accelerators import nothing above them: the
context every forward returns (:class:`Context`), batch norm's (:class:`BatchNormContext`),
and the window geometry of convolution and pooling (padding, output sizes, window
offsets, cropping).
"""
from __future__ import annotations

import numpy

from . import _checks
from .backend import common_array_module


class Context:
    """What an op's forward kept for its backward.

    Every forward returns ``(y, ctx)``; ``ctx.backward(dy, input_grad=True)`` returns
    ``(dx, *parameter_grads)``, ``dx`` being ``None`` with ``input_grad=False`` (the
    first layer's input gradient, which nothing uses). Each implementation writes
    ``_backward``; ``dy``'s shape is checked here, once for all of them.
    """

    __slots__ = ("op", "out_shape")

    def __init__(self, op: str, out_shape):
        self.op = op
        self.out_shape = tuple(out_shape)

    def backward(self, dy, input_grad: bool = True) -> tuple:
        _checks.shape(f"{self.op} backward", "dy", dy, self.out_shape)
        return self._backward(dy, input_grad)

    def _backward(self, dy, input_grad: bool) -> tuple:
        raise NotImplementedError


class BatchNormContext(Context):
    """What ``backward_of`` needs, and ``batch_stats``: the batch's (mean, biased var) or None."""

    __slots__ = ("x_hat", "inv_std", "weight", "training", "backward_of", "batch_stats")

    def __init__(self, x_hat, inv_std, weight, training, backward_of, batch_stats=None):
        super().__init__("batch_norm", x_hat.shape)
        self.x_hat, self.inv_std, self.weight, self.training = x_hat, inv_std, weight, training
        self.backward_of, self.batch_stats = backward_of, batch_stats

    def _backward(self, dy, input_grad):
        return self.backward_of(dy, self.x_hat, self.weight, self.inv_std, self.training,
                                input_grad)


def normalize_padding(padding, kernel_size, stride) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` from an int, a pair, ``"valid"`` or ``"same"``.

    ``"same"`` pads ``f - 1`` in total, the extra pixel of an even kernel going
    to the bottom/right as in PyTorch; it requires stride 1.
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0), (0, 0)
        if mode == "same":
            if stride != (1, 1):
                raise ValueError(
                    f"padding='same' requires stride 1, got stride={stride}")
            totals = [f - 1 for f in kernel_size]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise ValueError(f"padding: expected an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = _checks.pair("padding", padding, _checks.non_negative_int)
    return (ph, ph), (pw, pw)


def output_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
    """``floor((n + 2p - f) / s) + 1`` (the notes' formula, padding split in two)."""
    return (size + pad[0] + pad[1] - kernel) // stride + 1


def output_hw(x_shape, kernel, stride, pads) -> tuple[int, int]:
    """The output's ``(OH, OW)`` for an ``(N, C, H, W)`` input."""
    return tuple(output_size(n, f, s, p) for n, f, s, p in zip(x_shape[2:], kernel, stride, pads))


def pool_output_size(size: int, kernel: int, stride: int, pad: int,
                     ceil_mode: bool = False) -> int:
    """PyTorch's pooling output size: ``floor((n + 2p - f) / s) + 1``, or with
    ``ceil_mode`` the ceiling, less the last window if it would start in the right
    padding (every window starts inside the input or its left padding)."""
    span = size + 2 * pad - kernel
    count = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (count - 1) * stride >= size + pad:
        count -= 1
    return count


def pool_pads(x_shape, kernel, stride, padding, ceil_mode=False):
    """``(pads, out_hw)`` of pooling with symmetric ``padding`` ``(ph, pw)``: ``pads``
    is ``((top, bottom), (left, right))`` with ceil mode's overhang added to the
    bottom and right, so that :func:`output_hw` of ``pads`` is ``out_hw`` and every
    window lies inside the padded input (max pools it as -inf, average as 0)."""
    pads, out_hw = [], []
    for n, f, s, p in zip(x_shape[2:], kernel, stride, padding):
        count = pool_output_size(n, f, s, p, ceil_mode)
        pads.append((p, max(p, (count - 1) * s + f - n - p)))
        out_hw.append(count)
    return tuple(pads), tuple(out_hw)


def avg_pool_bounds(x_shape, padding, count_include_pad=True):
    """Per axis, the stretch ``[lo, hi)`` (input coordinates) whose positions an
    average window counts in its divisor: ``[-p, n + p)`` with ``count_include_pad``
    (the padding, not ceil mode's overhang beyond it), else ``[0, n)``."""
    return tuple((-p, n + p) if count_include_pad else (0, n)
                 for n, p in zip(x_shape[2:], padding))


def avg_pool_divisor(x_shape, kernel, stride, padding, out_hw, count_include_pad=True):
    """The ``(OH, OW)`` float64 NumPy array of each average window's divisor, as
    PyTorch counts it: the window's part inside :func:`avg_pool_bounds`, a product
    of one count per axis."""
    counts = []
    for f, s, p, o, (lo, hi) in zip(kernel, stride, padding, out_hw,
                                    avg_pool_bounds(x_shape, padding, count_include_pad)):
        start = numpy.arange(o) * s - p
        counts.append(numpy.minimum(start + f, hi) - numpy.maximum(start, lo))
    return numpy.outer(*counts).astype(numpy.float64)


def check_window(where, x_shape, kernel, pads):
    """The (padded) input must hold at least one window."""
    for axis, (n, f, p) in enumerate(zip(x_shape[2:], kernel, pads)):
        if n + p[0] + p[1] < f:
            dim = "height" if axis == 0 else "width"
            raise ValueError(
                f"{where}: kernel {dim} {f} is larger than the padded input {dim} "
                f"{n + p[0] + p[1]} (input {n}, padding {p[0]}+{p[1]}); input shape "
                f"{tuple(x_shape)}")


def pad_input(x, pads, value=0.0):
    """``x`` padded on its last two axes (no copy when there is nothing to pad)."""
    (pt, pb), (pl, pr) = pads
    if pt == pb == pl == pr == 0:
        return x
    xp = common_array_module(x=x)
    return xp.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)


def crop(x_padded, x_shape, pads):
    """The inverse of :func:`pad_input`: the ``x_shape`` interior of ``x_padded``."""
    (pt, _), (pl, _) = pads
    return x_padded[:, :, pt:pt + x_shape[2], pl:pl + x_shape[3]]


def window_offsets(kernel, stride, out_hw, dilation=(1, 1)):
    """``(k, rows, cols)`` for each kernel offset ``(r, s)``, ``k = r * S + s``:
    ``x_padded[..., rows, cols]`` is the ``(OH, OW)`` grid of inputs that offset
    touches (offset ``r`` reads from row ``r * dilation_h``). Convolution and
    pooling loop over these (a few dozen at most) instead of over pixels."""
    for r in range(kernel[0]):
        top = r * dilation[0]
        rows = slice(top, top + stride[0] * (out_hw[0] - 1) + 1, stride[0])
        for s in range(kernel[1]):
            left = s * dilation[1]
            yield r * kernel[1] + s, rows, slice(left, left + stride[1] * (out_hw[1] - 1) + 1,
                                                stride[1])


def dilated_kernel(kernel, dilation) -> tuple[int, int]:
    """The extent ``d (f - 1) + 1`` a kernel of ``f`` taps ``d`` apart spans, per axis:
    the window size every output-size and padding formula takes."""
    return tuple(d * (f - 1) + 1 for f, d in zip(kernel, dilation))
