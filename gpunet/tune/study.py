"""A tuning run on disk: its settings in ``OUT/tune.json``, its trials in an Optuna
study; the table of trials, the best command and the plot of each hyperparameter
against validation accuracy."""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal

from .. import config
from ..recipe import train_command
from .space import Param, parse_param
from .trials import TRIAL_FOLDER, TUNE_FILES, _row, _show, _storage, _worker, require_optuna

# The study name of runs from before each run had its own (tune.json without "study").
STUDY = "gpunet"


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
        the files and trial folders tune wrote (:data:`~gpunet.tune.trials.TUNE_FILES`,
        ``trials/NNN``); anything else in ``out``, ``trials/`` included, stays."""
        import shutil
        optuna = require_optuna()
        try:
            optuna.delete_study(study_name=self.name, storage=_storage(optuna, self.storage))
        except KeyError:
            pass  # removed already: what overwriting wants
        for name in TUNE_FILES:
            path = os.path.join(self.out, name)
            if os.path.isfile(path):
                os.remove(path)
        trials = os.path.join(self.out, "trials")
        if not os.path.isdir(trials):
            return
        for name in os.listdir(trials):
            path = os.path.join(trials, name)
            if TRIAL_FOLDER.fullmatch(name) and os.path.isdir(path) \
                    and not os.path.islink(path):
                shutil.rmtree(path)
        if not os.listdir(trials):
            os.rmdir(trials)

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

    def rerun_interrupted(self, limit: int) -> int:
        """Interrupted trials that no trial reruns yet, each enqueued with its
        hyperparameters (where the current space still holds them), so that those a
        Ctrl-C cut short run again rather than new draws; with the trials already
        waiting, at most ``limit``. Returns how many were enqueued."""
        states = require_optuna().trial.TrialState
        study = self.load()
        space = {param.name: param for param in self.space()}
        trials = study.get_trials(deepcopy=False)
        rerun = {t.user_attrs.get("rerun_of") for t in trials}
        waiting = sum(1 for t in trials if t.state == states.WAITING)

        def reruns(trial) -> bool:
            values = trial.user_attrs.get("hyperparameters") or {}
            return (trial.state == states.FAIL and trial.user_attrs.get("interrupted")
                    and trial.number not in rerun and values.keys() == space.keys()
                    and all(space[name].contains(v) for name, v in values.items()))

        again = [trial for trial in trials if reruns(trial)][:max(0, limit - waiting)]
        for trial in again:
            study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})
        return len(again)

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
        self.rerun_interrupted(remaining)
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
                                      sampler, pruner, seeds[i], threads),
                kwargs={"settings": config.given()}))
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


