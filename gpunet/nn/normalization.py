"""Batch normalisation (over one process's batch, or every process's with
:class:`SyncBatchNorm`) and local response normalisation layers."""
from __future__ import annotations

import numpy

from .. import _checks, _process_group
from ..backend import get_device
from ..init import constant
from ..ops import batch_norm_forward, lrn_forward
from .module import Module, Parameter


class _BatchNorm(Module):
    _ranks: tuple[int, ...] = ()
    _layout = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        self.num_features = _checks.positive_int("num_features", num_features)
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"eps: expected a number > 0, got {eps!r}")
        self.eps = float(eps)
        self.momentum = None if momentum is None else _checks.probability("momentum", momentum)
        self.weight = Parameter(constant(num_features, 1.0), decay=False)  # gamma
        self.bias = Parameter(constant(num_features, 0.0), decay=False)    # beta
        self.register_buffer("running_mean", constant(num_features, 0.0))
        self.register_buffer("running_var", constant(num_features, 1.0))
        self.register_buffer("num_batches_tracked",
                             get_device().xp.zeros((), dtype=numpy.int64))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def _statistics_group(self):
        """The processes whose rows the training statistics are over (``None``: this
        process's batch alone)."""
        return None

    def forward(self, x):
        where = f"{type(self).__name__}({self.num_features})"
        _checks.float_array(where, "input", x)
        if x.ndim not in self._ranks or x.shape[1] != self.num_features:
            raise ValueError(f"{where}: input must be {self._layout} with C="
                             f"{self.num_features}, got shape {tuple(x.shape)}")
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked += 1
            if momentum is None:  # PyTorch: a cumulative average of all batches
                momentum = 1.0 / float(self.num_batches_tracked)
        y, self._ctx = batch_norm_forward(
            x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
            training=self.training, momentum=momentum, eps=self.eps,
            world=self._statistics_group())
        return y

    def backward(self, dy, input_grad: bool = True):
        return self._add_grads(self._saved().backward(dy, input_grad), self.weight, self.bias)


class BatchNorm1d(_BatchNorm):
    """Per-feature normalisation of ``(N, C)`` or ``(N, C, L)``."""

    _ranks, _layout = (2, 3), "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Per-channel normalisation of ``(N, C, H, W)`` over ``N, H, W``."""

    _ranks, _layout = (4,), "(N, C, H, W)"


class SyncBatchNorm(_BatchNorm):
    """Batch normalisation whose training statistics are those of every process's rows
    together (PyTorch's ``SyncBatchNorm``): two small all-reduces in the forward and one
    in the backward, on the textbook path. Input ``(N, C, ...)``, two to five axes.

    ``process_group``: what to reduce over, an object with ``size``, ``all_reduce`` and
    ``sum`` (:mod:`gpunet._process_group`), e.g. a :class:`gpunet.distributed.World`;
    ``None`` takes the one :func:`gpunet.distributed.init` registers when the job
    starts. With no group, or a group of one process, it is a plain batch norm.
    """

    _ranks, _layout = (2, 3, 4, 5), "(N, C, ...) with 2 to 5 axes"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 *, process_group=None):
        # keyword-only: PyTorch's fourth argument is ``affine``, which gpunet lacks
        super().__init__(num_features, eps, momentum)
        self.process_group = _process_group.check(process_group)

    def _statistics_group(self):
        group = _process_group.default() if self.process_group is None else self.process_group
        return group if group is not None and group.size > 1 else None

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group=None) -> Module:
        """:func:`convert_sync_batchnorm`, under PyTorch's name for it."""
        return convert_sync_batchnorm(module, process_group)


def convert_sync_batchnorm(module: Module, process_group=None) -> Module:
    """``module`` with every batch norm in it (``BatchNorm1d``, ``BatchNorm2d``, at any
    depth) replaced by a :class:`SyncBatchNorm` over ``process_group`` that keeps its
    parameters (the same ``Parameter`` objects: an optimizer made before still updates
    them), its running statistics and its mode. Returns ``module``, changed in place, or
    the new layer where ``module`` itself is a batch norm (as PyTorch)."""
    _process_group.check(process_group)
    if isinstance(module, _BatchNorm):
        synced = SyncBatchNorm(module.num_features, module.eps, module.momentum,
                               process_group=process_group)
        synced.weight, synced.bias = module.weight, module.bias
        for name in module._buffer_names:
            synced.register_buffer(name, getattr(module, name))
        synced.train(module.training)
        return synced
    for name, child in list(module.named_children()):
        setattr(module, name, convert_sync_batchnorm(child, process_group))
    return module


class LocalResponseNorm(Module):
    """``y_c = x_c / (k + alpha/size * sum of x^2 over size neighbouring channels)^beta``."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size = _checks.positive_int("size", size)
        self.alpha = _checks.non_negative("alpha", alpha)
        self.beta = _checks.non_negative("beta", beta)
        if not (isinstance(k, (int, float)) and k > 0):
            raise ValueError(f"k: expected a number > 0, got {k!r}")
        self.k = float(k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"

    def forward(self, x):
        y, self._ctx = lrn_forward(x, self.size, self.alpha, self.beta, self.k)
        return y

    def backward(self, dy):
        dx, = self._saved().backward(dy)
        return dx
