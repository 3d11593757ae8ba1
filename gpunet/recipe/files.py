"""A run's folder: what may be written there, what an earlier run left, what
``resume`` takes from its checkpoint, and the files saved after each epoch."""
from __future__ import annotations

import os
import shlex
import sys

from .. import distributed as gpunet_distributed
from ..callbacks import Run
from ..io import read_checkpoint
from .run_config import RESUME_FLAGS, SAVED_FLAGS, RunConfig, RunConfigError

RUN_FILES = ("last.npz", "best.npz", "metrics.csv", "curves.png")
# save()'s temporary files (io.py), left behind only by a process killed mid-save
RUN_TEMPORARY = (".tmp-", ".npz")


class SaveEachEpoch:
    """After every epoch: ``last.npz`` (for resume), ``metrics.csv``, ``curves.png``."""

    def __init__(self, out, meta):
        self.out, self.meta = out, meta
        self.epoch = None  # the last epoch saved by this run
        self.plots = True  # False once plotting failed for want of matplotlib (said once)

    def on_validation_start(self, run: Run):
        # the epoch's training, saved before validating it: validation running out of
        # memory would otherwise lose it (--resume continues at the validation)
        if run.writer:
            run.save(os.path.join(self.out, "last.npz"), **self.meta)

    def on_epoch_end(self, run: Run):
        if not run.writer:  # a distributed run's other ranks
            return False
        run.save(os.path.join(self.out, "last.npz"), **self.meta)
        self.epoch = run.epoch  # at once: what a failure further on leaves behind
        run.history.to_csv(os.path.join(self.out, "metrics.csv"))
        if self.plots:
            try:
                run.history.plot(os.path.join(self.out, "curves.png"))
            except ImportError:
                self.plots = False
                print("gpunet: no curves.png: plotting needs matplotlib (pip install matplotlib)",
                      file=sys.stderr)
        return False


def check_writable(option: str, folder: str) -> None:
    """``folder`` exists or can be made, and takes a file: checked before a long run
    whose results would otherwise be lost at the end."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".gpunet-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise RunConfigError(f"{option}: cannot write in {folder} "
                             f"({exc.strerror or exc})") from None


def check_out(config: RunConfig) -> None:
    """``out`` is a folder we can write in, and holds no earlier run unless
    ``resume`` or ``overwrite`` says what to do with it."""
    out = config.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunConfigError(f"--out: {out} is a file; give a folder for the run")
    earlier = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    if earlier and not (config.resume or config.overwrite):
        raise RunConfigError(f"--out: {out} holds an earlier run ({', '.join(earlier)}); "
                             "continue it with --resume, choose another --out, or replace it "
                             "with --overwrite")
    if config.resume and not os.path.isfile(os.path.join(out, "last.npz")):
        raise RunConfigError(f"--resume: no checkpoint at {os.path.join(out, 'last.npz')}")
    check_writable("--out", out)


def remove_earlier_run(out) -> list[str]:
    """``overwrite``: remove every file the earlier run in ``out`` wrote (its
    checkpoints, metrics, curves, a save's leftover temporary file) and nothing else;
    called once the new run has passed every check that precedes training."""
    removed = []
    for name in sorted(os.listdir(out)):
        if name in RUN_FILES or (name.startswith(RUN_TEMPORARY[0])
                                 and name.endswith(RUN_TEMPORARY[1])):
            os.remove(os.path.join(out, name))
            removed.append(name)
    return removed


def _flag(name: str, value) -> str:
    option = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return option if value else f"no {option}"
    return f"{option} {value}"


def resume_settings(config: RunConfig, given, processes: int) -> tuple[RunConfig, dict]:
    """The run's config with its flags taken from the checkpoint in ``out``, and the
    checkpoint's meta: a flag in ``given`` (typed again) with another value is
    refused, naming each, as is another number of processes (it would change the
    global batch)."""
    last = os.path.join(config.out, "last.npz")
    header, _ = read_checkpoint(last)
    saved = header.get("meta", {})
    flags = saved.get("flags")
    if flags is None:  # a checkpoint from before flags were saved: the old checks
        if saved.get("architecture") != config.model or saved.get("dataset") != config.dataset:
            raise RunConfigError(f"--resume: {last} is a {saved.get('architecture')} on "
                                 f"{saved.get('dataset')}, not {config.model} on "
                                 f"{config.dataset}")
        if saved.get("seed", config.seed) != config.seed:
            raise RunConfigError(f"--resume: {last} was trained with --seed {saved['seed']}, "
                                 f"not {config.seed}")
        return config, saved
    conflicts = [name for name in SAVED_FLAGS
                 if name in given and name in flags and getattr(config, name) != flags[name]]
    if conflicts:
        raise RunConfigError(
            f"--resume: {last} was trained with "
            + ", ".join(_flag(n, flags[n]) for n in conflicts) + "; drop "
            + ", ".join(_flag(n, getattr(config, n)) for n in conflicts)
            + " to continue it, or start a new run in another --out")
    restored = {name: flags[name] for name in SAVED_FLAGS if name in flags}
    restored.update({name: flags[name] for name in RESUME_FLAGS
                     if name in flags and name not in given})
    config = config.replace(**restored)
    saved_processes = saved.get("processes", 1)
    if saved_processes != processes:
        batch = config.batch_size
        raise RunConfigError(
            f"--resume: {last} was trained by {_processes(saved_processes)} with a global batch "
            f"of {batch * saved_processes} (--batch-size {batch} each); this run has "
            f"{_processes(processes)}, a global batch of {batch * processes}; continue it "
            f"with: {resume_command(config.out, saved_processes)}")
    return config, saved


def _processes(n: int) -> str:
    return f"{n} process{'es' if n != 1 else ''}"


def resume_command(out, processes: int) -> str:
    """The command that continues the run in ``out`` as it was started: its flags come
    from the checkpoint, the process count from ``mpiexec``."""
    if processes > 1:
        return (f"mpiexec -n {processes} gpunet train --resume --out {shlex.quote(out)} "
                "--distributed")
    return f"gpunet train --resume --out {shlex.quote(out)}"


def what_was_saved(config: RunConfig, epoch) -> str:
    """What an interrupted or failed run left in ``out``, and how to continue it."""
    out = config.out
    if epoch is None:
        return ("nothing of this run was saved (no epoch finished)"
                + ("" if config.overwrite else f"; {out} is as it was"))
    best = os.path.join(out, "best.npz")
    processes = gpunet_distributed.world().size if config.distributed else 1
    return (f"saved {os.path.join(out, 'last.npz')} after epoch {epoch}"
            + (f" and {best}" if os.path.exists(best) else "")
            + f"; continue with: {resume_command(out, processes)}")
