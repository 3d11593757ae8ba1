"""Optimizers, learning-rate schedules and EWMA."""
from . import schedules
from .ewma import ewma
from .optimizers import (
    SGD,
    Adam,
    AdamW,
    Momentum,
    Optimizer,
    RMSProp,
    decay_groups,
    l2_gradient,
)

__all__ = ["SGD", "Adam", "AdamW", "Momentum", "Optimizer", "RMSProp", "decay_groups", "ewma",
           "l2_gradient", "schedules"]
