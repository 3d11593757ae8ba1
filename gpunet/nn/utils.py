"""Gradient clipping, as ``torch.nn.utils``: in place on each parameter's ``.grad``."""
from __future__ import annotations

import math

from ..backend import get_array_module
from .module import Module, Parameter

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _parameters(where: str, parameters) -> list[Parameter]:
    if isinstance(parameters, Module):
        return parameters.parameters()
    if isinstance(parameters, Parameter):
        return [parameters]
    params = list(parameters)
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"{where}: parameters[{i}] is a {type(p).__name__}, expected a "
                            "Parameter")
    return params


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False):
    """Scale every gradient by ``min(1, max_norm / (total + 1e-6))``, ``total`` being
    the ``norm_type``-norm of all the gradients together (``inf``: the largest
    ``|g|``). Returns ``total`` before clipping, a 0-d array on the gradients'
    device (PyTorch returns a 0-d tensor); 0.0 for no parameters."""
    where = "clip_grad_norm_"
    params = _parameters(where, parameters)
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not max_norm >= 0:
        raise ValueError(f"{where}: max_norm must be a number >= 0, got {max_norm}")
    if not norm_type > 0:
        raise ValueError(f"{where}: norm_type must be > 0 or inf, got {norm_type}")
    if not params:
        return 0.0
    xp = get_array_module(params[0].grad)
    if math.isinf(norm_type):
        total = xp.stack([xp.abs(p.grad).max() for p in params]).max()
    elif norm_type == 2.0:
        total = xp.sqrt(xp.stack([(p.grad * p.grad).sum() for p in params]).sum())
    else:
        total = xp.stack([(xp.abs(p.grad) ** norm_type).sum() for p in params]).sum() \
            ** (1.0 / norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(f"{where}: the total {norm_type}-norm of the gradients is "
                           f"{float(total)}; with error_if_nonfinite=False they are scaled "
                           "anyway")
    scale = xp.minimum(max_norm / (total + 1e-6), 1.0)  # on the device: no sync per step
    for p in params:
        p.grad *= scale.astype(p.grad.dtype)
    return total


def clip_grad_value_(parameters, clip_value: float) -> None:
    """Clamp every gradient entry to ``[-clip_value, clip_value]``."""
    params = _parameters("clip_grad_value_", parameters)
    clip_value = float(clip_value)
    if not clip_value >= 0:
        raise ValueError(f"clip_grad_value_: clip_value must be a number >= 0, got {clip_value}")
    for p in params:
        get_array_module(p.grad).clip(p.grad, -clip_value, clip_value, out=p.grad)
