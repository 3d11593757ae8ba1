"""Awkward shapes and the tolerance table, in one place: the kernel tests, the GPU
check's smoke and timing stages and the benchmarks' own tests take them from here.

``KERNEL_CASES`` (layers) and ``OPTIMIZER_CASES`` (optimizer steps) are small and
awkward on purpose (odd sizes, stride 2, padding, a tail block, a parameter of one
element) and between them launch every kernel of ``kernels/*.cu``: the smoke stage
fails on a kernel none of them launched, and the dry run of the timing stage times
each layer case. ``tolerance`` is how far a kernel may be from the textbook xp path.
"""
from __future__ import annotations

import math

import numpy

from .. import config, ops, optim
from ..backend import get_array_module
from ..nn.module import Parameter
from .cases import Case

# Relative to the largest |reference| of the array: float32 sums of a few dozen
# O(1) terms that cancel carry ~1e-5 of that scale in rounding; float64 ~1e-12
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
# TF32 rounds each operand to 10 mantissa bits (2^-11 relative): over sums of ~27
# terms that cancel, ~6e-3 of the largest output; a wrong fragment layout would be
# off by O(1)
TF32_TOLERANCE = 2e-2
# Longer sums: 4 ulp per term of the longest one (conv2d_wide reduces 66 channels,
# 1.3e-5 seen), still far under any indexing mistake
ULPS_PER_TERM = 4
# The first 20 Adam steps of LeNet-5 (batch norm) on the CPU and on the GPU: float32
# in two orders of summation, drifting apart step by step, not an index mistake
LOSS_CURVE_TOLERANCE = 1e-3

# family -> shape; conv2d: (N, C, H, W, K, R, S, stride, padding); pooling:
# (N, C, H, W, kernel, stride, padding); batch norm: (N, C, H, W)
KERNEL_CASES = {
    # 128x128 forward and weight GEMMs (OH OW = 12: the weight GEMM reads dy as vectors)
    "conv2d": (2, 12, 7, 6, 100, 3, 3, 2, 1),
    "conv2d_wide": (2, 66, 5, 6, 20, 1, 1, 1, 0),   # 64-row forward; 128x128 dx GEMM
    "conv2d_wide_grads": (2, 30, 5, 6, 64, 3, 3, 1, 1),  # 64-row dx and weight GEMMs
    # few filters and channels: the _direct kernels; N OH OW = 264 terms, so that the
    # weight gradient splits its reduction (split-K) even on the test double's one SM
    "conv2d_direct": (2, 3, 23, 21, 6, 3, 3, 2, 1),
    # TF32 allowed (float32): all 3 GEMMs (OH OW = 20: the weight's dy as vectors)
    "conv2d_tf32": (2, 24, 5, 4, 100, 3, 3, 1, 1),
    # C R S = 360 on a grid under a wave: the forward's split-K kernels and their reduce
    "conv2d_split": (1, 40, 6, 5, 100, 3, 3, 1, 1),
    "conv2d_wide_split": (1, 40, 6, 4, 60, 3, 3, 1, 1),  # and the wide weight GEMM, dy in vectors
    "conv2d_split_tf32": (1, 40, 6, 5, 100, 3, 3, 1, 1),
    "max_pool2d": (2, 3, 7, 7, 3, 2, 1),
    "avg_pool2d": (1, 2, 6, 5, 2, 2, 0),
    "batch_norm": (3, 4, 5, 5),
}
# the families whose case runs with TF32 allowed (in float32)
TF32_FAMILIES = ("conv2d_tf32", "conv2d_split_tf32")

# Optimizer families: family -> (gpunet.optim class, hyperparameters), each stepping
# OPTIMIZER_SHAPES: 1001 elements (a tail block of 256), a bias of 7 that does not
# decay, a weight of one element that does; every family decays, so that the kernels'
# per-parameter L2 switch is exercised both ways
OPTIMIZER_SHAPES = ((7, 11, 13), (7,), (1, 1))
OPTIMIZER_CASES = {
    "adam": ("Adam", {"lr": 1e-2, "weight_decay": 0.1}),
    "adamw": ("AdamW", {"lr": 1e-2, "weight_decay": 0.1}),
    "sgd": ("SGD", {"lr": 0.1, "weight_decay": 0.1}),  # no momentum: no buffer
    "sgd_nesterov": ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True,
                             "weight_decay": 0.1}),
    "sgd_dampening": ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5,
                              "weight_decay": 0.1}),
    "momentum": ("Momentum", {"lr": 0.1, "beta": 0.9, "weight_decay": 0.1}),
    "rmsprop": ("RMSProp", {"lr": 1e-2, "beta": 0.9, "eps": 1e-8, "weight_decay": 0.1}),
}
# three steps: Adam's bias corrections 1 - beta^t differ at each, and SGD's momentum
# buffer is made at the first step and updated after
OPTIMIZER_STEPS = 3


def tolerance(dtype, terms: int = 1, tf32: bool = False) -> float:
    """The largest error allowed a kernel against the xp path, relative to the
    largest |reference| of the output, for sums of at most ``terms`` terms."""
    dtype = numpy.dtype(dtype)
    if tf32 and dtype == numpy.float32:
        return TF32_TOLERANCE
    return max(TOLERANCE[dtype.name], ULPS_PER_TERM * float(numpy.finfo(dtype).eps) * terms)


def family_shape(family: str) -> tuple:
    """The shape of the family's case: a layer's (``KERNEL_CASES``), or the shapes
    of an optimizer family's parameters."""
    return OPTIMIZER_SHAPES if family in OPTIMIZER_CASES else KERNEL_CASES[family]


def longest_sum(family: str) -> int:
    """The most terms one output of the family's case adds: C R S (forward), K R S
    (input gradient), N OH OW (weight gradient), a window or channel, or an
    optimizer's steps (its state sums one term a step)."""
    if family in OPTIMIZER_CASES:
        return OPTIMIZER_STEPS
    shape = KERNEL_CASES[family]
    if family.startswith("conv2d"):
        n, c, h, w, k, r, s, stride, pad = shape
        oh, ow = (h + 2 * pad - r) // stride + 1, (w + 2 * pad - s) // stride + 1
        return max(c * r * s, k * r * s, n * oh * ow)
    return max(math.prod(shape[:1] + shape[2:4]), 9)  # pooling windows, batch-norm channels


def family_outputs(family: str, dtype, use_kernels: bool, to_device, seed: int = 0):
    """Forward and backward outputs of one family's case, its inputs drawn from
    ``seed`` and moved by ``to_device`` (``cupy.asarray``; the tests' emulator
    keeps NumPy); batch norm in training and in evaluation; an optimizer family's
    parameters, state and zeroed gradients after its steps
    (:func:`optimizer_outputs`)."""
    if family in OPTIMIZER_CASES:
        return optimizer_outputs(family, dtype, use_kernels, to_device, seed)
    rng = numpy.random.default_rng(seed)
    shape = KERNEL_CASES[family]

    def draw(*dims):
        return to_device(rng.standard_normal(dims).astype(dtype))

    def dy_for(y):  # any gradient that is not degenerate
        return get_array_module(y).cos(3 * y + 1)

    if family.startswith("conv2d"):
        n, c, h, w, k, r, s, stride, pad = shape
        x, weight, bias = draw(n, c, h, w), draw(k, c, r, s), draw(k)
        y, ctx = ops.conv2d_forward(x, weight, bias, stride, pad, use_kernels=use_kernels)
        return (y, *ctx.backward(dy_for(y)))
    if family == "batch_norm":
        c = shape[1]
        x, gamma, beta = draw(*shape), draw(c), draw(c)
        outputs = []
        for training in (True, False):
            mean, var = to_device(numpy.zeros(c, dtype)), to_device(numpy.ones(c, dtype))
            y, ctx = ops.batch_norm_forward(x, gamma, beta, mean, var, training=training,
                                            use_kernels=use_kernels)
            outputs += [y, mean, var, *ctx.backward(dy_for(y))]
        return tuple(outputs)
    n, c, h, w, kernel, stride, pad = shape
    x = draw(n, c, h, w)
    y, ctx = getattr(ops, f"{family}_forward")(x, kernel, stride, pad, use_kernels=use_kernels)
    return y, ctx.backward(dy_for(y))[0]


def optimizer_outputs(family: str, dtype, use_kernels: bool, to_device, seed: int = 0):
    """OPTIMIZER_STEPS steps (``zero_grad``, gradients added by hand, ``step``) of the
    family's optimizer over parameters of OPTIMIZER_SHAPES drawn from ``seed``; kernels
    on or off (``gpunet.config.override``: on CuPy arrays the kernels of
    kernels/optim.cu, else the xp path). Returns each parameter, then its state arrays
    (by name; none for SGD without momentum), then the gradients after a last
    ``zero_grad``."""
    rng = numpy.random.default_rng(seed)
    name, hyper = OPTIMIZER_CASES[family]

    def draw(shape):
        return to_device(rng.standard_normal(shape).astype(dtype))

    params = [Parameter(draw(shape)) for shape in OPTIMIZER_SHAPES]
    with config.override(kernels=use_kernels):
        optimizer = getattr(optim, name)(params, **hyper)
        for _ in range(OPTIMIZER_STEPS):
            optimizer.zero_grad()
            for p in params:  # accumulated, as backward does: a missed zeroing shows
                p.grad += draw(p.shape)
            optimizer.step()
        optimizer.zero_grad()
    state = [s[key] for s in optimizer.state for key in sorted(s) if s[key] is not None]
    return (*(p.data for p in params), *state, *(p.grad for p in params))


def layer_case(family: str) -> Case:
    """The family's case as a benchmark :class:`Case` (net ``awkward``): what the
    dry run of the timing stage times, and the benchmarks' tests run beside
    PyTorch."""
    shape = KERNEL_CASES[family]
    if family.startswith("conv2d"):
        n, c, h, w, k, r, s, stride, pad = shape
        return Case("awkward", family, "conv", (n, c, h, w), (c, k, (r, s)),
                    (("stride", stride), ("padding", pad)))
    if family == "batch_norm":
        return Case("awkward", family, "batchnorm", shape, (shape[1],))
    n, c, h, w, kernel, stride, pad = shape
    return Case("awkward", family, family[:3] + "pool", (n, c, h, w), (kernel, stride, pad))


AWKWARD_LAYER_CASES = [layer_case(family) for family in KERNEL_CASES]
