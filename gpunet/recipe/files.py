"""A run's folder: what may be written there, what an earlier run left, what
``resume`` takes from its checkpoint, and the files saved after each epoch."""
from __future__ import annotations

import os
import shlex
import sys

from .. import distributed as gpunet_distributed
from ..callbacks import Run
from ..io import read_checkpoint
from .run_config import RESUME_FLAGS, SAVED_FLAGS, RunConfig, RunConfigError, option

RUN_FILES = ("last.npz", "best.npz", "metrics.csv", "curves.png")
# save()'s temporary files (io.py), left behind only by a process killed mid-save
RUN_TEMPORARY = (".tmp-", ".npz")


class SaveEachEpoch:
    """After every epoch: ``last.npz`` (for resume), ``metrics.csv``, ``curves.png``;
    and ``last.npz`` once more before each validation. It knows what ``last.npz``
    holds, for :func:`what_was_saved`.

    ``resumed``: the meta of the checkpoint a resumed run started from (what
    ``last.npz`` holds until this run saves)."""

    def __init__(self, out, meta, resumed: dict | None = None):
        self.out, self.meta = out, meta
        self.last = os.path.join(out, "last.npz")
        self.resumed = resumed
        # what last.npz holds: (the last epoch whose training it holds, whether that
        # epoch was validated too); None: no checkpoint
        self.holds = checkpoint_holds(resumed) if resumed is not None else None
        self.saved = False  # whether this run wrote last.npz
        self._saving = None  # (what the save under way holds, the file it replaces)
        self.plots = True  # False once plotting failed for want of matplotlib (said once)

    def on_validation_start(self, run: Run):
        # the epoch's training, saved before validating it: validation running out of
        # memory would otherwise lose it (--resume continues at the validation)
        if run.writer:
            self._save_last(run, (run.history.partial["epoch"], False))

    def on_epoch_end(self, run: Run):
        if not run.writer:  # a distributed run's other ranks
            return False
        self._save_last(run, (run.epoch, True))
        run.history.to_csv(os.path.join(self.out, "metrics.csv"))
        if self.plots:
            try:
                run.history.plot(os.path.join(self.out, "curves.png"))
            except ImportError:
                self.plots = False
                print("gpunet: no curves.png: plotting needs matplotlib (pip install matplotlib)",
                      file=sys.stderr)
        return False

    def _save_last(self, run: Run, holds: tuple[int, bool]) -> None:
        self._saving = (holds, _file_identity(self.last))
        run.save(self.last, **self.meta)
        self.holds = holds
        self.saved = True
        self._saving = None

    def holds_now(self) -> tuple[tuple[int, bool] | None, bool]:
        """``(holds, saved)``: what ``last.npz`` holds, and whether this run wrote it."""
        if self._saving is not None:
            # Ctrl-C may land between the rename that publishes a save and the lines
            # that record it: a file other than the one replaced is the new one
            holds, replaced = self._saving
            if _file_identity(self.last) != replaced:
                return holds, True
        return self.holds, self.saved


def _file_identity(path) -> tuple | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    # save() renames a new file over the old: another inode, even within one mtime tick
    return info.st_ino, info.st_mtime_ns, info.st_size


def checkpoint_holds(meta: dict) -> tuple[int, bool]:
    """What a run's checkpoint (its ``meta``) holds: ``(epoch, validated)``, the last
    epoch whose training it holds and whether that epoch was validated too (False:
    saved before its validation, which a resumed run does first)."""
    partial = (meta.get("history") or {}).get("partial")
    if partial:
        return partial["epoch"], False
    return meta.get("epoch", 0), True


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
    """The flag as the user would type it: a switch off and an optional flag left out
    (``--schedule``, ``--clip-grad-norm``: None) read ``no --schedule``."""
    if isinstance(value, bool) or value is None:
        return option(name) if value else f"no {option(name)}"
    return f"{option(name)} {value}"


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


def resume_command(out, processes: int, flags: dict | None = None) -> str:
    """The command that continues the run in ``out`` as it was started: its flags come
    from the checkpoint, the process count from ``mpiexec``; ``flags`` (name: value)
    are typed again, for those the checkpoint holds another value of."""
    typed = "".join(f" {option(name)} {shlex.quote(str(value))}"
                    for name, value in (flags or {}).items())
    if processes > 1:
        return (f"mpiexec -n {processes} gpunet train --resume --out {shlex.quote(out)}"
                f"{typed} --distributed")
    return f"gpunet train --resume --out {shlex.quote(out)}{typed}"


def _what_it_holds(holds: tuple[int, bool]) -> str:
    epoch, validated = holds
    if validated:
        return f"after epoch {epoch}"
    return f"with epoch {epoch}'s training, before its validation (resuming validates it)"


def what_was_saved(config: RunConfig, saver: SaveEachEpoch) -> str:
    """What an interrupted or failed run left in ``out``, and how to continue it."""
    out = config.out
    holds, saved = saver.holds_now()
    if holds is None:  # a new run (or one replacing another) that saved nothing yet
        return ("nothing of this run was saved (no epoch's training finished)"
                + ("" if config.overwrite else f"; {out} is as it was"))
    processes = gpunet_distributed.world().size if config.distributed else 1
    flags = {}
    if saved and holds == (config.epochs, True):  # interrupted while testing: nothing to resume
        return (f"saved {saver.last} after epoch {config.epochs}, the last: training is done; "
                f"test it with: gpunet evaluate {shlex.quote(saver.last)}")
    if saved:
        said = f"saved {saver.last} {_what_it_holds(holds)}"
    else:  # a resumed run: the checkpoint it started from, with that run's flags
        said = (f"nothing of this run was saved; {saver.last} is as it was "
                f"({_what_it_holds(holds)})")
        earlier = (saver.resumed or {}).get("flags", {})
        # --epochs, --data-root typed for this run: the checkpoint still has the old ones
        flags = {name: getattr(config, name) for name in RESUME_FLAGS
                 if name in earlier and getattr(config, name) != earlier[name]
                 and getattr(config, name) is not None}
    best = os.path.join(out, "best.npz")
    return (said + (f"; {best} holds the best epoch so far" if os.path.exists(best) else "")
            + f"; continue with: {resume_command(out, processes, flags)}")
