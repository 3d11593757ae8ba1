"""What ``fit`` calls back, and what it shows them: :class:`Callback`, the
:class:`Run` they see, :class:`EarlyStopping` and :class:`ModelCheckpoint`."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from .history import COLUMNS, History
from .nn import Module


class Callback:
    """Called once before the first step (``on_fit_start``: check what can be
    checked, raise if it cannot work), after every training step and every epoch;
    return ``True`` from the last two to stop training there."""

    def on_fit_start(self, run: Run) -> None:
        return None

    def on_step_end(self, run: Run) -> bool | None:
        return None

    def on_epoch_end(self, run: Run) -> bool | None:
        return None

    def on_validation_start(self, run: Run) -> None:
        """Before validating an epoch whose steps are done (``history.partial`` holds
        its totals, ``run.epoch`` is still the one before): a checkpoint saved now
        resumes at the validation, so that running out of memory there loses no
        training."""
        return None


def _check_monitor(who: str, monitor: str) -> None:
    if monitor not in COLUMNS[1:5]:
        raise ValueError(f"{who}: monitor must be one of {', '.join(COLUMNS[1:5])}, "
                         f"got {monitor!r}")


def _check_monitored(who: str, monitor: str, run: Run) -> None:
    if monitor.startswith("val_") and not run.has_val_data:
        raise ValueError(f"{who}: monitor={monitor!r} needs fit(..., val_data=...); pass "
                         f"validation data or monitor {monitor[4:]!r}")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs,
    or at once (with a warning saying so) when it is NaN."""

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0):
        _check_monitor("EarlyStopping", monitor)
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.sign = -1.0 if "loss" in monitor else 1.0
        self.best, self.waited = -math.inf, 0

    def on_fit_start(self, run):
        _check_monitored("EarlyStopping", self.monitor, run)

    def on_epoch_end(self, run):
        value = self.sign * run.history.rows[-1][self.monitor]
        if math.isnan(value):
            warnings.warn(f"EarlyStopping: {self.monitor} is NaN after epoch {run.epoch}; "
                          "stopping", RuntimeWarning, stacklevel=2)
            return True
        if value > self.best + self.min_delta:
            self.best, self.waited = value, 0
            return False
        self.waited += 1
        return self.waited >= self.patience


class ModelCheckpoint(Callback):
    """Save model, optimizer, schedule, epoch and history to ``path`` after each
    epoch, or (``save_best_only``) only when ``monitor`` improves."""

    def __init__(self, path, monitor: str = "val_accuracy", save_best_only: bool = True,
                 **meta):
        _check_monitor("ModelCheckpoint", monitor)
        self.path, self.monitor, self.save_best_only, self.meta = path, monitor, \
            save_best_only, meta
        self.sign = -1.0 if "loss" in monitor else 1.0
        self.best = -math.inf

    def on_fit_start(self, run):
        if self.save_best_only:  # saving every epoch needs no monitored value
            _check_monitored("ModelCheckpoint", self.monitor, run)

    def on_epoch_end(self, run):
        value = self.sign * run.history.rows[-1][self.monitor]
        if self.save_best_only and not value > self.best:
            return False
        self.best = max(self.best, value)
        if run.writer:
            run.save(self.path, **self.meta)
        return False


@dataclass
class Run:
    """What callbacks see: the objects being trained and the history so far."""

    model: Module
    optimizer: object
    schedule: object
    history: History
    epoch: int = 0   # epochs completed
    step: int = 0    # training steps completed, over all epochs
    has_val_data: bool = False
    writer: bool = True  # whether this process writes files (rank 0 of a distributed run)

    def save(self, path, **meta) -> str:
        from .io import save
        schedule = self.schedule.state_dict() if self.schedule is not None else None
        return save(path, self.model, self.optimizer, epoch=self.epoch,
                    history=self.history.to_dict(), schedule=schedule, **meta)

