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
trial is a ``gpunet train`` run (:func:`gpunet.recipe.run_training`) in
``OUT/trials/NNN``. Optuna is an optional extra: ``pip install 'gpunet[tune]'``.
"""
from __future__ import annotations

import os
import uuid

from ..recipe import run_defaults
from .space import (
    Param,
    check_space,
    check_trials,
    choice,
    int_uniform,
    log_uniform,
    one_minus_log_uniform,
    parse_param,
    read_space,
    refine,
    uniform,
)
from .study import Study
from .trials import _storage, require_optuna

__all__ = ["Param", "log_uniform", "one_minus_log_uniform", "uniform", "int_uniform", "choice",
           "parse_param", "read_space", "check_space", "check_trials", "refine", "search",
           "Study"]


def threads_per_worker(workers: int) -> int:
    """This process's cores shared out between ``workers`` trial processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def devices_for(spec: str | None) -> list[str]:
    """One CUDA device a worker where the run asks for CUDA (or ``auto``) and several
    exist; otherwise [] (every worker on the run's device)."""
    from .. import backend, config
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


