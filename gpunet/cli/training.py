"""``gpunet train`` and ``gpunet tune``: their flags mapped to the library's
:func:`gpunet.recipe.run_training` and :mod:`gpunet.tune`, and what they print."""
from __future__ import annotations

import dataclasses
import math
import os
import sys

from .. import distributed as gpunet_distributed
from ..recipe import RunConfig, RunStatus, run_defaults, run_training
from ..recipe.files import what_was_saved
from ..recipe.run_config import RUN_FLAGS
from .errors import fail, interrupted
from .parser import UsageError


def config_from_args(args) -> RunConfig:
    """``gpunet train``'s parsed flags as the run they ask for."""
    names = {f.name for f in dataclasses.fields(RunConfig)} - {"progress"}
    return RunConfig(**{name: getattr(args, name) for name in names},
                     progress=not args.no_progress)


def _note_status(args, status: RunStatus) -> None:
    """What main's out-of-memory line reads from ``args``: the phase, the model and the
    flags in effect (a resumed run's, from its checkpoint)."""
    args.phase = status.phase
    if status.memory_model is not None:
        args.memory_model = status.memory_model
    if status.config is not None:
        for name in RUN_FLAGS:
            setattr(args, name, getattr(status.config, name))


def cmd_train(args) -> int:
    status = RunStatus()
    try:
        try:
            result = run_training(config_from_args(args), given=args.given, status=status)
        except Exception as exc:
            if interrupted(exc):  # Ctrl-C inside a library that wrapped it (an import)
                raise KeyboardInterrupt from exc
            raise
        finally:
            _note_status(args, status)
    except KeyboardInterrupt:
        if status.saver is None:
            raise
        message = f"gpunet: interrupted; {what_was_saved(status.config, status.saver)}"
        if not gpunet_distributed.end_interrupted(message):
            print(message, file=sys.stderr)
        return 130
    except OSError as exc:
        if status.saver is None:  # before training: nothing of this run was written
            raise
        # a full disk, mid-run: the one line says what the last good checkpoint is
        raise OSError(f"{exc}; {what_was_saved(status.config, status.saver)}") from None
    if not args.distributed or gpunet_distributed.world().is_root:
        scores = result.test
        print(f"test accuracy: {scores['accuracy']:.4f} (loss {scores['loss']:.4f}, "
              f"{scores['images']:,} images)")
    return 0


SEARCH_FLAGS = ("sampler", "pruner", "search_seed")  # kept in tune.json for --resume


def cmd_tune(args) -> int:
    from .. import tune
    tune.require_optuna()
    out = args.refine or args.out
    study = tune.Study(out, args.storage)
    run_flags = list(run_defaults())
    threads = tune.threads_per_worker(args.workers)
    try:
        if args.resume or args.refine:
            _continue_tuning(args, study, run_flags, threads)
        else:
            if study.exists() and not args.overwrite:
                raise UsageError(f"--out {out} holds a tuning run: --resume continues it, "
                                 f"--refine {out} narrows it, --overwrite replaces it")
            space = [tune.parse_param(text) for text in args.param]
            space += tune.read_space(args.space) if args.space else []
            if not space:
                raise UsageError("tune: give the search space with --param NAME=KIND:LOW:HIGH "
                                 "(repeatable) or --space FILE")
            tune.search(space, {name: getattr(args, name) for name in run_flags}, out,
                        args.trials, args.workers, args.sampler, args.pruner, args.search_seed,
                        args.storage, threads, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"gpunet: tuning interrupted; gpunet tune --resume --out {out} runs the "
              "remaining trials", file=sys.stderr)
        return 130
    table = study.table()
    with open(os.path.join(out, "trials.txt"), "w") as f:
        f.write(table + "\n")
    print(table)
    plot = study.plot(os.path.join(out, "tune.png"))
    if plot:
        print(f"plot: {plot}")
    best = study.best_command()
    if best is None:  # a study that found nothing has failed, whatever its trials say
        counts = {}
        for row in study.rows():
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        return fail("error: no trial completed ("
                    + ", ".join(f"{n} {state}" for state, n in counts.items())
                    + f"); the table above says why, {os.path.join(out, 'trials')} holds "
                    "their runs", 1)
    print(f"best: {best}")
    return 0


def _continue_tuning(args, study, run_flags, threads) -> None:
    """``--resume`` and ``--refine``: the settings from tune.json, the search flags
    typed again replacing theirs; ``--trials`` with --resume is the run's new total."""
    from .. import tune
    option = "--resume" if args.resume else "--refine"
    if not study.exists():
        raise UsageError(f"{option}: {study.out} holds no tuning run (no tune.json)")
    typed = sorted(args.given & set(run_flags)) + (["param"] if args.param else []) + \
        (["space"] if args.space else [])
    if typed:
        raise UsageError(f"{option} takes the run's settings from {study.settings_path}; "
                         "drop " + ", ".join("--" + n.replace("_", "-") for n in typed))
    study.check_storage(option)
    settings = study.settings()
    for name in SEARCH_FLAGS:
        if name in args.given:
            settings["search"][name] = getattr(args, name)
    if args.refine:
        completed = len(study.best(10**9))
        space = tune.refine(study.space(), study.best(max(3, math.ceil(completed / 4))))
        settings["rounds"].append({"space": {p.name: p.spec() for p in space},
                                   "trials": args.trials})
        settings["trials"] = study.finished() + args.trials
        print("refined: " + ", ".join(f"{p.name}={p.spec()}" for p in space), flush=True)
    elif "trials" in args.given:  # as Optuna's n_trials on a resumed study: the total
        finished = study.finished()
        if args.trials <= finished:
            raise UsageError(f"--trials {args.trials}: {study.out} has {finished} trial(s) "
                             f"already; give more to add some")
        settings["rounds"][-1]["trials"] += args.trials - settings["trials"]
        settings["trials"] = args.trials
    study.write_settings(settings)
    search = settings["search"]
    study.run(settings["trials"], args.workers, search["sampler"], search["pruner"],
              search["search_seed"], threads, tune.devices_for(settings["train"].get("device")))
