"""Hyperparameter tuning as the notes describe it, on Optuna.

Sample at random rather than on a grid, each hyperparameter on the scale that
fits it: the learning rate ``alpha = 10**r`` with ``r`` uniform (:func:`log_uniform`),
a momentum or Adam ``beta = 1 - 10**r`` so that 0.9 ... 0.999 gets equal effort per
decade (:func:`one_minus_log_uniform`); then go coarse to fine (:func:`refine`), and
train many models at once ("caviar") rather than babysit one ("panda").

Trials are Optuna trials in one study, in an RDB storage (a SQLite file in the run
folder by default): several worker processes, or machines sharing a database,
take trials from it, a run interrupted with Ctrl-C continues with ``--resume``,
and Optuna's pruners stop trials whose validation accuracy falls behind. Each
trial is a ``gpunet train`` run (:func:`gpunet.cli.run_training`) in
``OUT/trials/NNN``. Optuna is an optional extra: ``pip install 'gpunet[tune]'``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import signal
import sys
import time
import uuid
import warnings
from dataclasses import dataclass

__all__ = ["Param", "log_uniform", "one_minus_log_uniform", "uniform", "int_uniform", "choice",
           "parse_param", "read_space", "check_space", "check_trials", "refine", "search",
           "Study"]

# The study name of runs from before each run had its own (tune.json without "study").
STUDY = "gpunet"
# A running trial's worker writes a heartbeat this often; one silent for GRACE_S is
# taken for dead (a killed worker, a machine gone) and failed by the next --resume.
HEARTBEAT_S, GRACE_S = 10, 40


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError("gpunet tune needs Optuna: pip install 'gpunet[tune]' "
                          "(or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures show in gpunet's table
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


@dataclass(frozen=True)
class Param:
    """One hyperparameter and how to sample it: ``kind`` is ``log`` (``10**r``),
    ``beta`` (``1 - 10**r``), ``uniform``, ``int``, ``pow2`` (``2**k``) or ``choice``."""
    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    options: tuple = ()

    def __post_init__(self):
        where = f"{self.name}={self.spec()}"
        if self.kind == "choice":
            if not self.options:
                raise ValueError(f"{where}: a choice needs at least one option")
            return
        if self.kind not in KINDS:
            raise ValueError(f"{where}: the kind must be one of {', '.join(KINDS)}, "
                             f"got {self.kind!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"{where}: low must be below high, got low={self.low}, "
                             f"high={self.high}")
        if self.kind == "log" and self.low <= 0:
            raise ValueError(f"{where}: a log range needs low > 0, got {self.low}")
        if self.kind == "beta" and not 0 < self.low < self.high < 1:
            raise ValueError(f"{where}: beta needs 0 < low < high < 1, got {self.low}, "
                             f"{self.high}")
        if self.kind in ("int", "pow2") and (self.low != int(self.low)
                                             or self.high != int(self.high)):
            raise ValueError(f"{where}: {self.kind} needs whole bounds")
        if self.kind == "pow2" and (self.low < 1 or not _is_pow2(self.low)
                                    or not _is_pow2(self.high)):
            raise ValueError(f"{where}: pow2 needs powers of two >= 1, got {self.low}, "
                             f"{self.high}")

    def spec(self) -> str:
        """The ``--param`` text: ``log:0.0001:1``, ``choice:sgd,adam`` ..."""
        if self.kind == "choice":
            return "choice:" + ",".join(str(o) for o in self.options)
        return f"{self.kind}:{_number(self.low)}:{_number(self.high)}"

    def sample(self, trial):
        """The value for an Optuna ``trial``; what Optuna samples uniformly is the
        scale: r for ``log`` (named ``name``), log10(1 - beta) (named ``1-name``)."""
        if self.kind == "log":
            return trial.suggest_float(self.name, self.low, self.high, log=True)
        if self.kind == "beta":
            return 1.0 - trial.suggest_float(f"1-{self.name}", 1.0 - self.high, 1.0 - self.low,
                                             log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.name, self.low, self.high)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        if self.kind == "pow2":
            return 2 ** trial.suggest_int(f"log2({self.name})", int(math.log2(self.low)),
                                          int(math.log2(self.high)))
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.options))
        raise ValueError(f"{self.name}: cannot sample kind {self.kind!r}")

    def scale(self, value: float) -> float:
        """Where ``value`` sits on the sampling scale (refining and plots use it)."""
        if self.kind == "log":
            return math.log10(value)
        if self.kind == "beta":
            return math.log10(1.0 - value)
        if self.kind == "pow2":
            return math.log2(value)
        return float(value)

    def unscale(self, u: float) -> float:
        if self.kind == "log":
            return 10.0 ** u
        if self.kind == "beta":
            return 1.0 - 10.0 ** u
        if self.kind == "pow2":
            return 2.0 ** round(u)
        return round(u) if self.kind == "int" else u


KINDS = ("log", "beta", "uniform", "int", "pow2", "choice")


def _is_pow2(x) -> bool:
    return x >= 1 and int(x) & (int(x) - 1) == 0


def _number(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) >= 1 else f"{x:g}"


def log_uniform(name, low, high) -> Param:
    """``10**r`` with ``r`` uniform in ``[log10 low, log10 high]``: a learning rate."""
    return Param(name, "log", float(low), float(high))


def one_minus_log_uniform(name, low, high) -> Param:
    """``1 - 10**r`` with ``r`` uniform in ``[log10(1 - high), log10(1 - low)]``: a
    beta of momentum, RMSProp or Adam, as much effort on 0.99-0.999 as on 0.9-0.99."""
    return Param(name, "beta", float(low), float(high))


def uniform(name, low, high) -> Param:
    return Param(name, "uniform", float(low), float(high))


def int_uniform(name, low, high, power_of_two: bool = False) -> Param:
    """A whole number in ``[low, high]``; with ``power_of_two``, ``2**k`` with ``k``
    uniform (batch sizes)."""
    return Param(name, "pow2" if power_of_two else "int", int(low), int(high))


def choice(name, options) -> Param:
    return Param(name, "choice", options=tuple(options))


def _option(text: str):
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_param(text: str) -> Param:
    """``name=kind:low:high`` or ``name=choice:a,b,c``, as ``--param`` takes it."""
    name, sep, rest = text.partition("=")
    kind, _, bounds = rest.partition(":")
    if not sep or not name or not kind:
        raise ValueError(f"--param {text!r}: expected NAME=KIND:LOW:HIGH or NAME=choice:A,B "
                         f"(KIND one of {', '.join(KINDS)})")
    name = name.strip().replace("-", "_")
    if kind == "choice":
        return choice(name, [_option(o) for o in bounds.split(",") if o])
    parts = bounds.split(":")
    if len(parts) != 2:
        raise ValueError(f"--param {text!r}: {kind} takes LOW:HIGH, got {bounds!r}")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--param {text!r}: LOW and HIGH must be numbers") from None
    return Param(name, kind, low, high)


def read_space(path: str) -> list[Param]:
    """A JSON or YAML (``.yaml``, ``.yml``) mapping of NAME: SPEC, e.g.
    ``{"lr": "log:1e-4:1", "optimizer": "choice:sgd,adam"}``."""
    with open(path) as f:
        if path.endswith((".yaml", ".yml")):
            import yaml  # Optuna brings PyYAML
            entries = yaml.safe_load(f)
        else:
            entries = json.load(f)
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"--space {path}: expected a mapping of NAME: SPEC, "
                         f"e.g. {{\"lr\": \"log:1e-4:1\"}}")
    return [parse_param(f"{name}={spec}") for name, spec in entries.items()]


def refine(space: list[Param], best: list[dict], margin: float = 0.1) -> list[Param]:
    """Coarse to fine: each range narrowed to the span of the ``best`` trials'
    values (dicts of name: value) on its own scale, widened by ``margin`` of the
    old span and kept inside the old range; a choice keeps the options they used."""
    if not best:
        raise ValueError("refine: no finished trial to refine around")
    narrowed = []
    for param in space:
        values = [trial[param.name] for trial in best if param.name in trial]
        if not values:
            narrowed.append(param)
            continue
        if param.kind == "choice":
            narrowed.append(choice(param.name, [o for o in param.options if o in values]))
            continue
        low, high = param.scale(param.low), param.scale(param.high)
        if param.kind == "beta":
            low, high = high, low  # log10(1 - beta) falls as beta rises
        pad = margin * (high - low)
        us = [param.scale(v) for v in values]
        new_low, new_high = max(low, min(us) - pad), min(high, max(us) + pad)
        ends = sorted((param.unscale(new_low), param.unscale(new_high)))
        if param.kind in ("int", "pow2") and ends[0] == ends[1]:
            narrowed.append(choice(param.name, [int(ends[0])]))
            continue
        narrowed.append(Param(param.name, param.kind, *ends))
    return narrowed


# Training flags a search space may set, and the kinds each takes.
TUNABLE = {"lr": "float", "momentum": "float", "weight_decay": "float", "decay": "float",
           "flip": "float", "batch_size": "int", "step_size": "int", "epochs": "int",
           "optimizer": "choice", "schedule": "choice", "batch_norm": "choice",
           "model": "choice"}
_KINDS_FOR = {"float": ("log", "beta", "uniform", "choice"), "int": ("int", "pow2", "choice"),
              "choice": ("choice",)}


def check_space(space: list[Param]) -> None:
    """Each name a training flag tune can set, once, with a kind it takes."""
    seen = set()
    for param in space:
        if param.name not in TUNABLE:
            raise ValueError(f"--param {param.name}: not a hyperparameter tune can set; one of "
                             + ", ".join(sorted(TUNABLE)))
        if param.name in seen:
            raise ValueError(f"--param {param.name}: given twice")
        seen.add(param.name)
        kinds = _KINDS_FOR[TUNABLE[param.name]]
        if param.kind not in kinds:
            raise ValueError(f"--param {param.name}={param.spec()}: {param.name} takes "
                             + ", ".join(kinds))


def _ends(param: Param) -> list:
    """The values that bound what ``param`` samples: each option of a choice, else
    low and high (every range is monotone in its scale, so the checks of train, all
    bounds or sets, hold inside it when they hold at both ends)."""
    if param.kind == "choice":
        return list(param.options)
    if param.kind in ("int", "pow2"):
        return [int(param.low), int(param.high)]
    return [param.low, param.high]


def _check_value(action, value, where: str) -> None:
    """``value`` as ``gpunet train`` takes the flag of ``action`` (its type, its choices)."""
    flag = action.option_strings[0]
    if value is None and action.default is None:
        return  # an optional flag left out (--schedule, --limit ...)
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: gpunet train's {flag} is on or off (true or false), "
                             f"got {value!r}")
        return
    if action.choices is not None:
        if value not in action.choices:
            raise ValueError(f"{where}: gpunet train's {flag} takes "
                             f"{', '.join(map(str, action.choices))}; got {value!r}")
        return
    if action.type is None:  # --device, --data-root: opened or read as train does
        return
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        action.type(str(value))
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"{where}: gpunet train's {flag} {exc}") from None
    except ValueError:
        expected = "a number" if action.type is float else "a whole number"
        raise ValueError(f"{where}: gpunet train's {flag} expected {expected}, "
                         f"got {value!r}") from None


def check_trials(space: list[Param], train: dict) -> None:
    """What ``gpunet train`` would refuse in every trial, refused before the first: the
    fixed flags of ``train`` and each value ``space`` can sample checked against train's
    flags (their types and choices), then train's own checks
    (:func:`gpunet.cli._check_train_flags`) at each combination of the ends of the
    ranges, so that flags that depend on each other (--schedule, --decay) are checked
    together. The device is opened as train opens it."""
    from .cli import UsageError, _check_train_flags, _use_device, run_actions
    actions = run_actions()
    for name, value in train.items():
        _check_value(actions[name], value, actions[name].option_strings[0])
    for param in space:
        for value in _ends(param):
            _check_value(actions[param.name], value, f"--param {param.name}={param.spec()}")
    names = [param.name for param in space]
    for values in itertools.product(*(_ends(param) for param in space)):
        try:
            _check_train_flags(argparse.Namespace(**{**train, **dict(zip(names, values))}))
        except UsageError as exc:
            message = str(exc)
            blamed = [f"--param {p.name}={p.spec()}" for p, v in zip(space, values)
                      if actions[p.name].option_strings[0] in message]
            raise ValueError(message + (f" (a value {' and '.join(blamed)} can sample)"
                                        if blamed else "")) from None
    try:
        _use_device(train["device"], quiet=True)
    except UsageError as exc:
        raise ValueError(str(exc)) from None


# -- running a study --------------------------------------------------------------------------
class _ReportEpochs:
    """A fit callback: each epoch's validation accuracy to Optuna, which may prune,
    except after the last of the trial's ``epochs``: that trial has finished, and
    stopping it would save nothing but lose a complete result."""

    def __init__(self, trial, optuna, epochs: int):
        self.trial, self.optuna, self.epochs = trial, optuna, epochs

    def on_epoch_end(self, run):
        accuracy = run.history["val_accuracy"][-1]
        self.trial.report(accuracy, run.epoch)
        if run.epoch < self.epochs and self.trial.should_prune():
            raise self.optuna.TrialPruned(f"validation accuracy {accuracy:.4f} at epoch "
                                          f"{run.epoch}")
        return False


def _objective(space: list[Param], train: dict, out: str, optuna):
    from .cli import run_training

    def objective(trial):
        from . import cpu
        values = {param.name: param.sample(trial) for param in space}
        trial.set_user_attr("hyperparameters", values)
        trial.set_user_attr("cpu_threads", cpu.num_threads())
        args = argparse.Namespace(**{**train, **values})
        args.out = os.path.join(out, "trials", f"{trial.number:03d}")
        args.resume, args.overwrite, args.no_progress, args.given = False, True, True, set()
        start = time.perf_counter()
        try:
            history, _ = run_training(args, [_ReportEpochs(trial, optuna, args.epochs)],
                                      test=False,
                                      announce=False)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        accuracies = history["val_accuracy"]
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
            child: bool = True) -> None:
    """One worker: ``trials`` trials of the study, one after another. In a child
    process it takes ``threads`` CPU threads (this process keeps its own setting),
    and a Ctrl-C ends it quietly (the parent reports it)."""
    if child:
        from . import cpu
        from .cli import _one_line_warning
        cpu.set_num_threads(threads)
        warnings.formatwarning = _one_line_warning  # as the parent prints them
    optuna = require_optuna()
    space = [parse_param(f"{name}={spec}") for name, spec in specs.items()]
    study = optuna.load_study(study_name=name, storage=_storage(optuna, storage),
                              sampler=_sampler(optuna, sampler, seed),
                              pruner=_pruner(optuna, pruner))
    try:
        study.optimize(_objective(space, train, out, optuna), n_trials=trials,
                       catch=(Exception,), callbacks=[_announce])
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


class Study:
    """A tuning run in ``out``: its settings in ``out/tune.json`` (the space of each
    round, the training flags, how many trials, the storage and the study's name),
    its trials in an Optuna study of that name, in that storage."""

    def __init__(self, out: str, storage: str | None = None):
        self.out = out
        self.settings_path = os.path.join(out, "tune.json")
        self.given_storage = storage

    @property
    def default_storage(self) -> str:
        return f"sqlite:///{os.path.abspath(os.path.join(self.out, 'study.db'))}"

    @property
    def storage(self) -> str:
        """The storage given, else the one tune.json records, else ``OUT/study.db``."""
        recorded = self.settings().get("storage") if self.exists() else None
        return self.given_storage or recorded or self.default_storage

    @property
    def name(self) -> str:
        """The study's name in its storage: each run its own, so that runs sharing a
        storage (or one run and the run it overwrote) never mix their trials."""
        return self.settings().get("study", STUDY)

    def check_storage(self, option: str) -> None:
        """A ``--storage`` typed again for an existing run must be the one it uses."""
        settings = self.settings()
        if self.given_storage is None or "storage" not in settings:
            return  # a run from before tune.json recorded it: the storage typed is the one
        recorded = settings["storage"] or self.default_storage
        if self.given_storage != recorded:
            raise ValueError(f"{option}: the run in {self.out} keeps its trials in {recorded}, "
                             f"not --storage {self.given_storage}; drop --storage")

    # settings ------------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.exists(self.settings_path)

    def settings(self) -> dict:
        with open(self.settings_path) as f:
            return json.load(f)

    def write_settings(self, settings: dict) -> None:
        os.makedirs(self.out, exist_ok=True)
        partial = self.settings_path + ".partial"
        with open(partial, "w") as f:
            json.dump(settings, f, indent=1)
        os.replace(partial, self.settings_path)

    def remove(self) -> None:
        """The run's study, from its storage (another run's in a shared one stay), then
        its files."""
        import shutil
        optuna = require_optuna()
        try:
            optuna.delete_study(study_name=self.name, storage=_storage(optuna, self.storage))
        except KeyError:
            pass  # removed already: what overwriting wants
        for name in ("tune.json", "study.db", "trials.txt", "tune.png"):
            path = os.path.join(self.out, name)
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(os.path.join(self.out, "trials"), ignore_errors=True)

    def space(self) -> list[Param]:
        rounds = self.settings()["rounds"]
        return [parse_param(f"{name}={spec}") for name, spec in rounds[-1]["space"].items()]

    # trials --------------------------------------------------------------------
    def load(self, storage=None):
        """The Optuna study (in ``storage``, an opened storage, else this run's)."""
        optuna = require_optuna()
        storage = storage or _storage(optuna, self.storage)
        try:
            return optuna.load_study(study_name=self.name, storage=storage)
        except KeyError:
            raise ValueError(f"{self.out}: {self.storage} holds no study {self.name!r} (its "
                             f"trials); was it removed, or is it another storage?") from None

    def trials(self) -> list:
        return self.load().get_trials(deepcopy=False)

    def close_interrupted(self) -> int:
        """Trials left running by a Ctrl-C (which marked them ``interrupted``) or by a
        worker that died (no heartbeat for GRACE_S) are failed as interrupted: they
        do not count, and this run makes up for them. Trials still beating are
        another worker's, and left alone."""
        optuna = require_optuna()
        storage = _storage(optuna, self.storage)
        study = self.load(storage)
        running = {t._trial_id: t for t in study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
        for trial_id, trial in running.items():
            if trial.user_attrs.get("interrupted"):
                storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        optuna.storages.fail_stale_trials(study)
        closed = 0
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
            if trial._trial_id in running:
                storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                closed += 1
        return closed

    def finished(self) -> int:
        """Trials that count: complete, pruned, or failed on their own (not interrupted)."""
        optuna = require_optuna()
        states = optuna.trial.TrialState
        return sum(1 for t in self.trials()
                   if t.state in (states.COMPLETE, states.PRUNED)
                   or (t.state == states.FAIL and not t.user_attrs.get("interrupted")))

    def run(self, trials: int, workers: int, sampler: str, pruner: str, seed: int | None,
            threads: int, devices: list[str]) -> None:
        """Run until ``trials`` trials of this study count, on ``workers`` processes
        (each ``threads`` CPU threads, or its own device of ``devices``)."""
        self.close_interrupted()
        remaining = trials - self.finished()
        if remaining <= 0:
            return
        settings = self.settings()
        specs = settings["rounds"][-1]["space"]
        workers = min(workers, remaining)
        shares = [remaining // workers + (i < remaining % workers) for i in range(workers)]
        # each worker, and each resumed or refined run, its own stream of samples
        started = len(self.trials())
        seeds = [None if seed is None else seed + 100_003 * i + started for i in range(workers)]
        if workers == 1:
            train = dict(settings["train"], device=devices[0] if devices else
                         settings["train"]["device"])
            _worker(self.storage, self.name, specs, train, self.out, shares[0], sampler, pruner,
                    seeds[0], threads, child=False)
            return
        context = multiprocessing.get_context("spawn")
        processes = []
        for i, share in enumerate(shares):
            train = dict(settings["train"])
            if devices:
                train["device"] = devices[i % len(devices)]
            processes.append(context.Process(
                target=_worker, args=(self.storage, self.name, specs, train, self.out, share,
                                      sampler, pruner, seeds[i], threads)))
        for process in processes:
            process.start()
        try:
            for process in processes:
                process.join()
        except KeyboardInterrupt:
            for process in processes:  # a Ctrl-C at a terminal reached them too
                if process.is_alive():
                    os.kill(process.pid, signal.SIGINT)
            for process in processes:  # let each record its trial as interrupted
                process.join(timeout=30)
                if process.is_alive():
                    process.terminate()
            raise

    # results -------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """One row a trial, best validation accuracy first; then pruned, failed."""
        optuna = require_optuna()
        rows = [_row(t) for t in self.trials() if t.state != optuna.trial.TrialState.RUNNING]
        order = {"complete": 0, "pruned": 1, "failed": 2, "interrupted": 3}
        rows.sort(key=lambda r: (order.get(r["state"], 4), -(r["val_accuracy"] or 0),
                                 -(r["last_accuracy"] or 0), r["trial"]))
        return rows

    def best(self, count: int) -> list[dict]:
        return [r["hyperparameters"] for r in self.rows() if r["state"] == "complete"][:count]

    def table(self) -> str:
        rows = self.rows()
        names = sorted({name for r in rows for name in r["hyperparameters"]})
        head = f"{'trial':>5}  {'state':11} {'val acc':>7}  {'epoch':>5}  {'seconds':>7}  " + \
            "  ".join(f"{n:>12}" for n in names)
        lines = [head, "-" * len(head)]
        for r in rows:
            accuracy = r["val_accuracy"] if r["state"] == "complete" else r["last_accuracy"]
            epoch = r["best_epoch"] if r["state"] == "complete" else r["last_epoch"]
            values = "  ".join(f"{_show(r['hyperparameters'].get(n)):>12}" for n in names)
            line = (f"{r['trial']:5d}  {r['state']:11} {_show(accuracy, '.4f'):>7}  "
                    f"{_show(epoch):>5}  {_show(r['seconds'], '.1f'):>7}  {values}")
            if r["error"]:
                line += f"  ({r['error']})"
            lines.append(line)
        return "\n".join(lines)

    def best_command(self) -> str | None:
        from .cli import train_command
        best = self.best(1)
        if not best:
            return None
        return train_command({**self.settings()["train"], **best[0]})

    def plot(self, path: str) -> str | None:
        """Each hyperparameter against validation accuracy, on its sampling scale
        (log axes for log-sampled ones, 1 - beta on a log axis); None without
        matplotlib or finished trials."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        space = self.space()
        done = [r for r in self.rows() if r["state"] in ("complete", "pruned")]
        if not done or not space:
            return None
        fig, axes = plt.subplots(1, len(space), figsize=(4 * len(space), 3.4), squeeze=False)
        for ax, param in zip(axes[0], space):
            for state, marker in (("complete", "o"), ("pruned", "x")):
                rows = [r for r in done if r["state"] == state
                        and param.name in r["hyperparameters"]]
                xs = [r["hyperparameters"][param.name] for r in rows]
                ys = [r["val_accuracy"] if state == "complete" else r["last_accuracy"]
                      for r in rows]
                if param.kind == "beta":
                    xs = [1.0 - x for x in xs]
                if param.kind == "choice":
                    xs = [str(x) for x in xs]
                if xs:
                    ax.scatter(xs, ys, marker=marker, label=state)
            if param.kind in ("log", "beta"):
                ax.set_xscale("log")
            if param.kind == "pow2":
                ax.set_xscale("log", base=2)
            _set_ticks(ax, param)
            ax.set_xlabel(f"1 - {param.name}" if param.kind == "beta" else param.name)
            ax.set_ylabel("validation accuracy")
            ax.grid(alpha=0.3)
        axes[0][0].legend()
        fig.tight_layout()
        partial = path + ".partial.png"
        fig.savefig(partial, dpi=100)
        plt.close(fig)
        os.replace(partial, path)
        return path


def _log_ticks(low: float, high: float) -> list[float]:
    """2 to 5 ticks in [low, high] at 1, 2, 5 (or 1, 3, or 1, or 1 ... 9) times a power of
    ten; every few decades where there are many; else the range's two ends."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))

    def inside(t):  # with a little slack: 1 - 0.9999 is 1.0000000000287557e-04
        return low * (1 - 1e-9) <= t <= high * (1 + 1e-9)

    for steps in ((1, 2, 5), (1, 3), (1,), range(1, 10)):
        ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in steps
                 if inside(m * 10.0 ** e)]
        if 2 <= len(ticks) <= 5:
            return ticks
    decades = [10.0 ** e for e in range(first, last + 1) if inside(10.0 ** e)]
    if len(decades) > 5:
        return decades[::math.ceil(len(decades) / 5)]
    return [low, high]


def _set_ticks(ax, param: Param) -> None:
    """Few enough tick labels that they never overlap on the plot's 4 inches: 1-2-5
    or decade ticks on log axes (no minor labels, which matplotlib adds inside a
    decade), at most 6 powers of two, at most 5 round numbers on a linear axis,
    choices slanted."""
    from matplotlib import ticker
    if param.kind == "choice":
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        return
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    low, high = param.low, param.high
    if param.kind == "beta":
        low, high = 1.0 - high, 1.0 - low
    if param.kind in ("log", "beta"):
        ticks = _log_ticks(low, high)
        ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    elif param.kind == "pow2":
        powers = range(int(math.log2(low)), int(math.log2(high)) + 1)
        ticks = [2 ** k for k in powers][::math.ceil(len(powers) / 6)]
        ax.set_xticks(ticks, [str(t) for t in ticks])
    else:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=4, integer=param.kind == "int"))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:.3g}"))


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


def threads_per_worker(workers: int) -> int:
    """This process's cores shared out between ``workers`` trial processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def devices_for(spec: str | None) -> list[str]:
    """One CUDA device a worker where the run asks for CUDA (or ``auto``) and several
    exist; otherwise [] (every worker on the run's device)."""
    from . import backend, config
    spec = spec or config.get("device")
    if spec not in ("auto", "cuda") or backend.cuda_unavailable_reason(1) is not None:
        return []
    count = 2
    while backend.cuda_unavailable_reason(count) is None:
        count += 1
    return [f"cuda:{i}" for i in range(count)]


def search(space: list[Param], train: dict | None = None, out: str = "runs/tune",
           trials: int = 12, workers: int = 1, sampler: str = "random", pruner: str = "median",
           seed: int | None = 0, storage: str | None = None, threads: int | None = None,
           overwrite: bool = False) -> Study:
    """A new tuning run in ``out``: ``trials`` runs of ``gpunet train`` with the flags
    of ``train`` (train's names and defaults, e.g. ``{"model": "lenet5", "epochs":
    1}``) and each hyperparameter of ``space`` sampled per trial, on ``workers``
    processes. Everything train would refuse is refused before the first trial
    (:func:`check_trials`). A run already in ``out`` is refused, or with ``overwrite``
    replaced: its files and its study (in whatever storage it used) removed. Returns
    the :class:`Study` (``rows()``, ``table()``, ``plot()``, ``best_command()``);
    ``gpunet tune --resume``/``--refine`` continue it."""
    from .cli import run_defaults
    optuna = require_optuna()
    defaults = run_defaults()
    unknown = sorted(set(train or {}) - set(defaults))
    if unknown:
        raise ValueError(f"search: train takes gpunet train's flags ({', '.join(defaults)}), "
                         f"got {', '.join(unknown)}")
    train = {**defaults, **(train or {})}
    check_space(space)
    if train["dev_size"] <= 0:
        raise ValueError("tune: trials are scored on validation data; --dev-size must be "
                         "above 0")
    check_trials(space, train)
    study = Study(out, storage)
    if study.exists() and not overwrite:
        raise ValueError(f"--out {out} holds a tuning run: gpunet tune --resume --out {out} "
                         f"continues it, --overwrite (overwrite=True) replaces it")
    if storage:  # a URL that cannot be opened is refused before anything changes
        _storage(optuna, storage)
    if study.exists():
        Study(out).remove()  # in the storage it recorded, not the one given now
    os.makedirs(out, exist_ok=True)
    url = storage or study.default_storage
    name = f"gpunet-{uuid.uuid4().hex[:12]}"
    optuna.create_study(study_name=name, storage=_storage(optuna, url), direction="maximize")
    study.write_settings({"train": train, "storage": storage, "study": name,
                          "search": {"sampler": sampler, "pruner": pruner, "search_seed": seed},
                          "rounds": [{"space": {p.name: p.spec() for p in space},
                                      "trials": trials}],
                          "trials": trials})
    if threads is None:
        threads = threads_per_worker(workers)
    study.run(trials, workers, sampler, pruner, seed, threads, devices_for(train["device"]))
    return study


def _show(value, fmt: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not fmt:
        return f"{value:.4g}"
    return format(value, fmt)
