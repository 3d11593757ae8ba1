"""Learning-rate decay, from the notes: call ``sched.step()`` once per epoch (or
once per iteration, reading "epoch" as "iteration"); ``sched.lr`` is the rate now.

With ``a0 = 0.2`` and ``decay_rate = 1``, :class:`InverseTimeDecay` gives 0.1,
0.067, 0.05, 0.04 for epochs 1 to 4 (the notes' table has 0.67 and 0.4: slips).
"""
from __future__ import annotations

import math

from .. import _checks

__all__ = ["Schedule", "InverseTimeDecay", "ExponentialDecay", "InverseSqrtDecay", "StepDecay",
           "CosineDecay"]


class Schedule:
    """Sets each parameter group's ``lr`` to ``rate(a0, epoch)``, ``a0`` being the
    group's ``lr`` when the schedule was made (as PyTorch's schedulers);
    ``base_lr`` and :meth:`lr_at` are the first group's. ``per_step`` says that
    ``fit`` steps it after every optimizer step instead of every epoch."""

    per_step = False

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


class CosineDecay(Schedule):
    """Linear warm-up, then cosine decay to ``min_lr`` at step ``total``:

    ``a = a0 (t + 1) / (warmup + 1)`` for ``t < warmup``, then
    ``a = min_lr + (a0 - min_lr) (1 + cos(pi (t - warmup) / (total - warmup))) / 2``,
    held at ``min_lr`` after ``total``. ``t`` counts :meth:`step` calls: epochs, or
    optimizer steps with ``per_step=True`` (``fit`` then steps it every batch). The
    warm-up rate applies from the start (``t = 0``), as PyTorch's
    ``SequentialLR([LinearLR(start_factor=1 / (warmup + 1), total_iters=warmup),
    CosineAnnealingLR(T_max=total - warmup, eta_min=min_lr)], milestones=[warmup])``.
    """

    def __init__(self, optimizer, total: int, warmup: int = 0, min_lr: float = 0.0,
                 per_step: bool = False):
        super().__init__(optimizer)
        self.total = _checks.positive_int("total", total)
        self.warmup = _checks.non_negative_int("warmup", warmup)
        if self.warmup >= self.total:
            raise ValueError(f"warmup: expected fewer steps than total ({self.total}), got "
                             f"{self.warmup}")
        self.min_lr = _checks.non_negative("min_lr", min_lr)
        self.per_step = bool(per_step)
        self._apply()

    def rate(self, base_lr, epoch):
        if epoch < self.warmup:
            return base_lr * (epoch + 1) / (self.warmup + 1)
        progress = min(epoch - self.warmup, self.total - self.warmup) / (self.total - self.warmup)
        return self.min_lr + (base_lr - self.min_lr) * (1 + math.cos(math.pi * progress)) / 2

    def _apply(self) -> None:
        for group, base in zip(self._groups(), self.base_lrs):
            group["lr"] = self.rate(base, self.epoch)  # t = 0 too: the warm-up's first rate
