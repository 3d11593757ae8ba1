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
    """Sets each parameter group's ``lr`` to ``rate(a0, epoch)``, ``a0`` being the
    group's ``lr`` when the schedule was made (as PyTorch's schedulers);
    ``base_lr`` and :meth:`lr_at` are the first group's."""

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{type(self).__name__}: expected an optimizer, "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in self._groups()]
        self.epoch = 0

    def _groups(self) -> list:
        return getattr(self.optimizer, "param_groups", None) or [self.optimizer.__dict__]

    @property
    def base_lr(self) -> float:
        return self.base_lrs[0]

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    def rate(self, base_lr: float, epoch: int) -> float:
        raise NotImplementedError

    def lr_at(self, epoch: int) -> float:
        return self.rate(self.base_lr, epoch)

    def _apply(self) -> None:
        for group, base in zip(self._groups(), self.base_lrs):
            group["lr"] = self.rate(base, self.epoch) if self.epoch else base

    def step(self) -> float:
        self.epoch += 1
        self._apply()
        return self.optimizer.lr

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "base_lr": self.base_lr, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.base_lrs = [float(v) for v in state.get("base_lrs", [state["base_lr"]])]
        if len(self.base_lrs) != len(self._groups()):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state has "
                             f"{len(self.base_lrs)} base rates, the optimizer "
                             f"{len(self._groups())} parameter groups")
        self._apply()


class InverseTimeDecay(Schedule):
    """``a = a0 / (1 + decay_rate * epoch)``."""

    def __init__(self, optimizer, decay_rate: float):
        super().__init__(optimizer)
        self.decay_rate = _checks.non_negative("decay_rate", decay_rate)

    def rate(self, base_lr, epoch):
        return base_lr / (1.0 + self.decay_rate * epoch)


class ExponentialDecay(Schedule):
    """``a = gamma^epoch * a0`` (the notes use ``gamma = 0.95``)."""

    def __init__(self, optimizer, gamma: float = 0.95):
        super().__init__(optimizer)
        self.gamma = _checks.non_negative("gamma", gamma)

    def rate(self, base_lr, epoch):
        return self.gamma ** epoch * base_lr


class InverseSqrtDecay(Schedule):
    """``a = k / sqrt(epoch) * a0`` for ``epoch >= 1`` (``a0`` before the first step)."""

    def __init__(self, optimizer, k: float):
        super().__init__(optimizer)
        self.k = _checks.non_negative("k", k)

    def rate(self, base_lr, epoch):
        return self.k / math.sqrt(epoch) * base_lr


class StepDecay(Schedule):
    """``a = a0 * gamma^floor(epoch / step_size)``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer)
        self.step_size = _checks.positive_int("step_size", step_size)
        self.gamma = _checks.non_negative("gamma", gamma)

    def rate(self, base_lr, epoch):
        return base_lr * self.gamma ** (epoch // self.step_size)
