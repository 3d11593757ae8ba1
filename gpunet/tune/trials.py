"""The trial runner: each trial a :func:`gpunet.recipe.run_training` run of a
:class:`~gpunet.recipe.RunConfig` in ``OUT/trials/NNN``, its validation accuracy
reported to Optuna each epoch (which may prune it), on one or several worker
processes that share the study's RDB storage."""
from __future__ import annotations

import os
import re
import sys
import time
import warnings

from ..recipe import RunConfig, run_training
from ..recipe.training import one_line_warning
from .interrupts import Interrupts
from .space import Param, parse_param

# A running trial's worker writes a heartbeat this often; one silent for GRACE_S is
# taken for dead (a killed worker, a machine gone) and failed by the next --resume.
HEARTBEAT_S, GRACE_S = 10, 40

# The names of what tune writes in OUT, which --overwrite removes and nothing else: a
# trial's folder OUT/trials/NNN (trial_folder), the run's files (a write's temporary
# ".partial" and SQLite's journals included).
TRIAL_FOLDER = re.compile(r"\d{3,}")
TUNE_FILES = ("tune.json", "tune.json.partial", "study.db", "study.db-journal", "study.db-wal",
              "study.db-shm", "trials.txt", "tune.png", "tune.png.partial.png")


def trial_folder(out: str, number: int) -> str:
    return os.path.join(out, "trials", f"{number:03d}")


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError("gpunet tune needs Optuna: pip install 'gpunet[tune]' "
                          "(or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures show in gpunet's table
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


class _ReportEpochs:
    """A fit callback: each epoch's validation accuracy to Optuna, which may prune,
    except after the last of the trial's ``epochs``: that trial has finished, and
    stopping it would save nothing but lose a complete result. A Ctrl-C waits for
    the report's write, and one that something swallowed stops the trial here."""

    def __init__(self, trial, optuna, epochs: int, interrupts: Interrupts | None = None):
        self.trial, self.optuna, self.epochs = trial, optuna, epochs
        self.interrupts = interrupts or Interrupts()

    def on_epoch_end(self, run):
        accuracy = run.history["val_accuracy"][-1]
        with self.interrupts.held():
            self.trial.report(accuracy, run.epoch)
            prune = run.epoch < self.epochs and self.trial.should_prune()
        if prune:
            raise self.optuna.TrialPruned(f"validation accuracy {accuracy:.4f} at epoch "
                                          f"{run.epoch}")
        return False


def _objective(space: list[Param], train: dict, out: str, optuna, interrupts: Interrupts):
    def objective(trial):
        from .. import cpu
        values = {param.name: param.sample(trial) for param in space}
        trial.set_user_attr("hyperparameters", values)
        trial.set_user_attr("cpu_threads", cpu.num_threads())
        config = RunConfig(**{**train, **values}, overwrite=True, progress=False,
                           out=trial_folder(out, trial.number))
        start = time.perf_counter()
        try:
            with interrupts.live():
                result = run_training(
                    config, [_ReportEpochs(trial, optuna, config.epochs, interrupts)],
                    test=False, announce=False, given=())
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            if interrupts.pending:  # a Ctrl-C that a library wrapped (an import under way)
                trial.set_user_attr("interrupted", True)
                raise KeyboardInterrupt from exc
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        accuracies = result.history["val_accuracy"]
        best = max(range(len(accuracies)), key=accuracies.__getitem__)
        trial.set_user_attr("best_epoch", best + 1)
        return accuracies[best]
    return objective


def _sampler(optuna, name: str, seed: int | None):
    samplers = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler,
                "qmc": optuna.samplers.QMCSampler}
    if name not in samplers:
        raise ValueError(f"--sampler: expected one of {', '.join(samplers)}, got {name!r}")
    return samplers[name](seed=seed)


def _pruner(optuna, name: str):
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner: expected median or none, got {name!r}")


def _announce(study, trial) -> None:
    """An Optuna callback: one line as each trial ends, written at once (workers share
    the terminal), so that a long study shows its progress."""
    row = _row(trial)
    if row["state"] == "complete":
        what = (f"val acc {row['val_accuracy']:.4f} (epoch {_show(row['best_epoch'])})")
    elif row["state"] == "pruned":
        what = f"at epoch {_show(row['last_epoch'])}, val acc {_show(row['last_accuracy'], '.4f')}"
    else:
        what = row["error"] or ""
    values = " ".join(f"{name}={_show(value)}" for name, value in row["hyperparameters"].items())
    line = (f"trial {row['trial']} {row['state']}: {what}; {_show(row['seconds'], '.1f')} s"
            + (f"; {values}" if values else ""))
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _worker(storage: str, name: str, specs: dict, train: dict, out: str, trials: int,
            sampler: str, pruner: str, seed: int | None, threads: int,
            child: bool = True, settings: dict | None = None) -> None:
    """One worker: ``trials`` trials of the study, one after another. In a child
    process it takes ``threads`` CPU threads (this process keeps its own setting) and
    the parent's ``settings`` given in Python (``gpunet.config.given()``: a spawned
    process sees only the environment), and a Ctrl-C ends it quietly (the parent
    reports it)."""
    interrupts = Interrupts()
    try:
        with interrupts.installed():  # from the start: a SIGINT while loading is not lost
            if child:
                from .. import config, cpu
                config.update(**(settings or {}))
                cpu.set_num_threads(threads)
                warnings.formatwarning = one_line_warning  # as the parent prints them
            optuna = require_optuna()
            space = [parse_param(f"{name}={spec}") for name, spec in specs.items()]
            study = optuna.load_study(study_name=name, storage=_storage(optuna, storage),
                                      sampler=_sampler(optuna, sampler, seed),
                                      pruner=_pruner(optuna, pruner))
            interrupts.check()
            study.optimize(_objective(space, train, out, optuna, interrupts), n_trials=trials,
                           catch=(Exception,),
                           callbacks=[_announce, lambda study, trial: interrupts.check()])
    except KeyboardInterrupt:
        if not child:
            raise  # the trial is recorded as interrupted; --resume runs it again


def _storage(optuna, url: str):
    """The study's RDB storage, with heartbeats so that a dead worker's trial can be
    told from a running one. A URL SQLAlchemy cannot open is one line naming it."""
    import sqlalchemy.exc
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"--storage {url}: expected a database URL that Optuna can open "
                         f"(e.g. sqlite:///path/study.db), got: {reason}") from None




def _row(t) -> dict:
    """A finished Optuna trial as the table shows it."""
    states = require_optuna().trial.TrialState
    state = {states.COMPLETE: "complete", states.PRUNED: "pruned",
             states.FAIL: "interrupted" if t.user_attrs.get("interrupted") else "failed",
             states.WAITING: "waiting"}.get(t.state, str(t.state))
    reported = t.intermediate_values
    return {"trial": t.number, "state": state, "val_accuracy": t.value,
            "last_epoch": max(reported) if reported else None,
            "last_accuracy": reported[max(reported)] if reported else None,
            "best_epoch": t.user_attrs.get("best_epoch"),
            "seconds": t.user_attrs.get("seconds"),
            "hyperparameters": t.user_attrs.get("hyperparameters", {}),
            "error": t.user_attrs.get("error")}




def _show(value, fmt: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not fmt:
        return f"{value:.4g}"
    return format(value, fmt)
