"""Learning-rate decay, from the notes: call ``sched.step()`` once per epoch (or
once per iteration, reading "epoch" as "iteration"); ``sched.lr`` is the rate now.

With ``a0 = 0.2`` and ``decay_rate = 1``, :class:`InverseTimeDecay` gives 0.1,
0.067, 0.05, 0.04 for epochs 1 to 4 (the notes' table has 0.67 and 0.4: slips).
"""
from __future__ import annotations

import math

from .. import _checks

__all__ = ["Schedule", "InverseTimeDecay", "ExponentialDecay", "InverseSqrtDecay", "StepDecay"]


class Schedule:
    """Sets ``optimizer.lr = lr_at(epoch)``, starting from the optimizer's ``lr`` (``a0``)."""

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{type(self).__name__}: expected an optimizer, "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.epoch = 0

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        self.epoch += 1
        self.optimizer.lr = self.lr_at(self.epoch)
        return self.optimizer.lr

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "base_lr": self.base_lr}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.base_lr = int(state["epoch"]), float(state["base_lr"])
        self.optimizer.lr = self.lr_at(self.epoch) if self.epoch else self.base_lr


class InverseTimeDecay(Schedule):
    """``a = a0 / (1 + decay_rate * epoch)``."""

    def __init__(self, optimizer, decay_rate: float):
        super().__init__(optimizer)
        self.decay_rate = _checks.non_negative("decay_rate", decay_rate)

    def lr_at(self, epoch):
        return self.base_lr / (1.0 + self.decay_rate * epoch)


class ExponentialDecay(Schedule):
    """``a = gamma^epoch * a0`` (the notes use ``gamma = 0.95``)."""

    def __init__(self, optimizer, gamma: float = 0.95):
        super().__init__(optimizer)
        self.gamma = _checks.non_negative("gamma", gamma)

    def lr_at(self, epoch):
        return self.gamma ** epoch * self.base_lr


class InverseSqrtDecay(Schedule):
    """``a = k / sqrt(epoch) * a0`` for ``epoch >= 1`` (``a0`` before the first step)."""

    def __init__(self, optimizer, k: float):
        super().__init__(optimizer)
        self.k = _checks.non_negative("k", k)

    def lr_at(self, epoch):
        return self.k / math.sqrt(epoch) * self.base_lr


class StepDecay(Schedule):
    """``a = a0 * gamma^floor(epoch / step_size)``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer)
        self.step_size = _checks.positive_int("step_size", step_size)
        self.gamma = _checks.non_negative("gamma", gamma)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)
