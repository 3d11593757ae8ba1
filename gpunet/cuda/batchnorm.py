"""Launchers for ``kernels/batchnorm.cu``: per-channel statistics, normalise and
affine, and the backward reductions and input gradient."""
from __future__ import annotations

import functools

import numpy

from .._context import BatchNormContext
from ..backend import get_array_module
from . import runtime
from .runtime import (
    BLOCK,
    Launch,
    address,
    ceil_div,
    check_indexable,
    geometry,
    indexable,
    new_output,
    table,
    with_divisors,
)

TARGET_BLOCKS = 512  # the statistics aim at about this many blocks, whatever the GPU
MIN_RUN = 1024       # values per block at least


def _sizes(shape):
    n, c = shape[:2]
    return n, c, int(numpy.prod(shape[2:], dtype=numpy.int64))


def _elementwise_grid(count):
    return (ceil_div(count, BLOCK), 1, 1)


def _aligned(*arrays) -> bool:
    return all(address(a) % 16 == 0 for a in arrays)


def _vectors(hw, dtype, aligned: bool) -> int:
    """1 when the elementwise kernels may move 16 bytes at a time: ``hw`` a multiple of
    the vector (so that one never straddles two channels), every array 16-byte aligned."""
    return int(aligned and hw % (16 // numpy.dtype(dtype).itemsize) == 0)


def _vector_grid(count, vectors, itemsize):
    return _elementwise_grid(ceil_div(count, 16 // itemsize) if vectors else count)


def fits(x_shape) -> bool:
    """Whether the kernels' 32-bit indices and grids cover this batch norm."""
    return indexable(numpy.prod(x_shape, dtype=numpy.int64)) and \
        x_shape[1] <= runtime.MAX_GRID_ROWS


def runs(m: int, channels: int) -> tuple[int, int]:
    """``(parts, chunk)``: each channel's ``m`` values in ``parts`` runs of ``chunk``
    (runtime.runs: enough blocks to fill a GPU, none under MIN_RUN values)."""
    return runtime.runs(m, channels, TARGET_BLOCKS, MIN_RUN)


def merge_weights(m: int, parts: int, chunk: int) -> numpy.ndarray:
    """Per run r of n_r values: ``1 / n_r``, ``n_r / (n_0 + ... + n_r)`` and
    ``(n_0 + ... + n_{r-1}) n_r / (n_0 + ... + n_r)``, computed in float64: the
    weights of Chan et al.'s pairwise merge of means and squared deviations."""
    counts = numpy.minimum(chunk, m - chunk * numpy.arange(parts)).astype(numpy.float64)
    so_far = numpy.cumsum(counts)
    before = so_far - counts
    return numpy.stack([1.0 / counts, counts / so_far, before * counts / so_far], -1).ravel()


# ChannelGeometry's fields (kernels/batchnorm.cu), in its order
GEOMETRY_FIELDS = ("C", "HW", "M", "hw_magic", "hw_shift", "c_magic", "c_shift")


@functools.lru_cache(maxsize=runtime.GEOMETRIES_KEPT)  # one dict lookup a launch
def _bn_geometry(c, hw, m):
    return geometry(GEOMETRY_FIELDS, with_divisors((c, hw, m), (hw, c)))


def _reduction(kernel, m, c, dtype) -> Launch:
    """A per-channel reduction: block (run, channel), a block's sum through shared
    memory."""
    parts, _ = runs(m, c)
    itemsize = numpy.dtype(dtype).itemsize
    return Launch(kernel, (parts, c, 1), (BLOCK, 1, 1), BLOCK * itemsize)


def stats_plan(x_shape, dtype) -> list[Launch]:
    """The launches of :func:`stats`: ``bn_fwd_stats`` (block (run, channel)) and
    ``bn_fwd_stats_combine`` (a thread per channel); none for an empty ``x``."""
    n, c, hw = _sizes(x_shape)
    if n * c * hw == 0:
        return []
    return [_reduction("bn_fwd_stats", n * hw, c, dtype),
            Launch("bn_fwd_stats_combine", _elementwise_grid(c), (BLOCK, 1, 1))]


def apply_plan(x_shape, dtype, aligned: bool = True) -> list[Launch]:
    """The launch of :func:`apply`: a thread per element, or per 16-byte vector of
    them where ``HW`` allows and the arrays are ``aligned`` (fresh CuPy arrays are)."""
    n, c, hw = _sizes(x_shape)
    size = n * c * hw
    if size == 0:
        return []
    itemsize = numpy.dtype(dtype).itemsize
    return [Launch("bn_fwd_apply", _vector_grid(size, _vectors(hw, dtype, aligned), itemsize),
                   (BLOCK, 1, 1))]


def train_forward_plan(x_shape, dtype, aligned: bool = True) -> list[Launch]:
    """The launches of :func:`train_forward`: three."""
    return stats_plan(x_shape, dtype) + apply_plan(x_shape, dtype, aligned)


def eval_forward_plan(x_shape, dtype, aligned: bool = True) -> list[Launch]:
    """The launches of :func:`forward` with running statistics: ``bn_fwd_apply`` (its
    ``inv_std`` comes from CuPy operations)."""
    return apply_plan(x_shape, dtype, aligned)


def backward_plan(dy_shape, dtype, input_grad: bool = True,
                  aligned: bool = True) -> list[Launch]:
    """The launches of :func:`backward`: ``bn_bwd_reduce`` and ``bn_bwd_reduce_combine``,
    and ``bn_bwd_dx`` with ``input_grad``; none for an empty ``dy``."""
    n, c, hw = _sizes(dy_shape)
    size = n * c * hw
    if size == 0:
        return []
    plan = [_reduction("bn_bwd_reduce", n * hw, c, dtype),
            Launch("bn_bwd_reduce_combine", _elementwise_grid(c), (BLOCK, 1, 1))]
    if input_grad:
        itemsize = numpy.dtype(dtype).itemsize
        plan.append(Launch("bn_bwd_dx",
                           _vector_grid(size, _vectors(hw, dtype, aligned), itemsize),
                           (BLOCK, 1, 1)))
    return plan


def stats(x, eps: float = 0.0, running=None, momentum: float = 0.0):
    """``(mean, var, pivot, offset, inv_std)`` per channel, each ``(C,)``: the biased
    variance, the mean as ``pivot + offset`` (one sample's value and the mean's offset
    from it, the two parts :func:`apply` centres by) and ``1 / sqrt(var + eps)``. With
    ``running = (running_mean, running_var)`` (``x``'s dtype, contiguous: see
    :func:`updates_running`) the same launch updates them in place: ``running =
    (1 - momentum) running + momentum batch``, the variance unbiased (``M / (M - 1)``)."""
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    check_indexable("batch_norm", x=x.size)
    n, c, hw = _sizes(x.shape)
    runtime.check_grid_rows("batch_norm", "channels", c)
    m = n * hw
    if x.size == 0:  # no channels (ops refuses training on fewer than 2 values a channel)
        return tuple(xp.zeros(c, x.dtype) for _ in range(5))
    geom = _bn_geometry(c, hw, m)
    parts, chunk = runs(m, c)
    weights = table(xp, ("batch_norm merge weights", m, parts, chunk),
                    lambda: merge_weights(m, parts, chunk), x.dtype)
    offsets, squares = (new_output(xp, (c, parts), x.dtype) for _ in range(2))
    reduce, combine = stats_plan(x.shape, x.dtype)
    reduce.run("batchnorm", x.dtype, (x, offsets, squares, geom, weights, numpy.int32(chunk)))
    mean, var, pivot, offset, inv_std = (new_output(xp, (c,), x.dtype) for _ in range(5))
    # without running statistics the kernel's running pointers are never read: any array
    running_mean, running_var = (mean, var) if running is None else running
    var_momentum = momentum * m / (m - 1) if m > 1 else 0.0
    scalar = x.dtype.type
    combine.run("batchnorm", x.dtype,
                (x, offsets, squares, mean, var, pivot, offset, inv_std, running_mean,
                 running_var, geom, weights, numpy.int32(parts), scalar(1.0 / m), scalar(eps),
                 scalar(momentum), scalar(var_momentum), numpy.int32(running is not None)))
    return mean, var, pivot, offset, inv_std


def updates_running(x, running_mean, running_var) -> bool:
    """Whether :func:`stats` can update these running statistics in place: arrays of
    ``x``'s module and dtype, contiguous ``(C,)`` (RawKernel ignores strides)."""
    xp = get_array_module(x)
    return all(get_array_module(a) is xp and a.dtype == x.dtype and a.ndim == 1
               and a.flags.c_contiguous for a in (running_mean, running_var))


def apply(x, pivot, offset, inv_std, weight, bias):
    """``(y, x_hat)``: ``x_hat = ((x - pivot) - offset) inv_std``, ``y = weight x_hat +
    bias``."""
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    check_indexable("batch_norm", x=x.size)
    n, c, hw = _sizes(x.shape)
    y, x_hat = new_output(xp, x.shape, x.dtype), new_output(xp, x.shape, x.dtype)
    if x.size == 0:  # nothing to launch (a zero grid)
        return y, x_hat
    args = [xp.ascontiguousarray(a) for a in (pivot, offset, inv_std, weight, bias)]
    aligned = _aligned(x, y, x_hat)
    (plan,) = apply_plan(x.shape, x.dtype, aligned)
    plan.run("batchnorm", x.dtype, (x, *args, y, x_hat, _bn_geometry(c, hw, n * hw),
                                    numpy.int32(x.size),
                                    numpy.int32(_vectors(hw, x.dtype, aligned))))
    return y, x_hat


def forward(x, weight, bias, running, eps):
    """``(y, ctx)`` as :func:`gpunet.ops.batchnorm._forward`."""
    xp = get_array_module(x)
    if running is None:
        mean, var, pivot, offset, inv_std = stats(x, eps)
    else:
        mean, var = (a.astype(x.dtype) for a in running)
        pivot, offset = mean, xp.zeros_like(mean)
        inv_std = 1.0 / xp.sqrt(var + eps)
    y, x_hat = apply(x, pivot, offset, inv_std, weight, bias)
    return y, BatchNormContext(x_hat, inv_std, weight, running is None, backward,
                               (mean, var) if running is None else None)


def train_forward(x, weight, bias, running_mean, running_var, momentum, eps):
    """``(y, ctx)`` in training, the running statistics updated in place (:func:`stats`;
    :func:`updates_running` must hold): three launches."""
    _, _, pivot, offset, inv_std = stats(x, eps, (running_mean, running_var), momentum)
    y, x_hat = apply(x, pivot, offset, inv_std, weight, bias)
    return y, BatchNormContext(x_hat, inv_std, weight, True, backward)


def backward(dy, x_hat, weight, inv_std, training: bool, input_grad: bool = True):
    """``(dx, dweight, dbias)``, ``dx`` ``None`` with ``input_grad=False``."""
    xp = get_array_module(dy)
    dy = xp.ascontiguousarray(dy)
    n, c, hw = _sizes(dy.shape)
    m = n * hw
    if dy.size == 0:  # no values: zero parameter gradients, an empty dx, no launch
        zeros = xp.zeros(c, dy.dtype), xp.zeros(c, dy.dtype)
        return (new_output(xp, dy.shape, dy.dtype) if input_grad else None, *zeros)
    geom = _bn_geometry(c, hw, m)
    parts, chunk = runs(m, c)
    sum_dy, sum_dy_xhat = (new_output(xp, (c, parts), dy.dtype) for _ in range(2))
    dx = new_output(xp, dy.shape, dy.dtype) if input_grad else None
    aligned = input_grad and _aligned(dy, x_hat, dx)
    reduce, combine, *dx_launch = backward_plan(dy.shape, dy.dtype, input_grad, aligned)
    reduce.run("batchnorm", dy.dtype, (dy, x_hat, sum_dy, sum_dy_xhat, geom, numpy.int32(chunk)))
    dbias, dweight = new_output(xp, (c,), dy.dtype), new_output(xp, (c,), dy.dtype)
    combine.run("batchnorm", dy.dtype, (sum_dy, sum_dy_xhat, dbias, dweight, numpy.int32(c),
                                        numpy.int32(parts)))
    if not input_grad:
        return None, dweight, dbias
    dx_launch[0].run("batchnorm", dy.dtype,
                     (dy, x_hat, xp.ascontiguousarray(weight), xp.ascontiguousarray(inv_std),
                      dbias, dweight, dx, geom, numpy.int32(dy.size), dy.dtype.type(1.0 / m),
                      numpy.int32(1 if training else 0),
                      numpy.int32(_vectors(hw, dy.dtype, aligned))))
    return dx, dweight, dbias
