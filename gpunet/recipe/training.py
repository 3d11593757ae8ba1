"""``run_training``: one training run from a :class:`RunConfig`, as ``gpunet train``
runs it: checks, device, model, data, resume, fit, checkpoints, test scores."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .. import backend
from .. import distributed as gpunet_distributed
from ..callbacks import ModelCheckpoint
from ..data.batching import train_dev_test_split
from ..data.transforms import Standardize, horizontal_flip, to_float
from ..history import History
from ..io import load
from ..losses import SoftmaxCrossEntropy
from ..nn import Module
from ..train import evaluate, fit
from .building import (
    IMAGE_SHAPES,
    INPUT_SHAPES,
    build_model,
    build_optimizer,
    build_schedule,
    check_model_input,
    load_dataset,
    models_for,
    prepare,
)
from .device import use_device
from .files import SaveEachEpoch, check_out, remove_earlier_run, resume_settings
from .run_config import RESUME_FLAGS, SAVED_FLAGS, RunConfig, RunConfigError, held_out


@dataclass
class RunResult:
    """What :func:`run_training` trained: the ``config`` it ran (a resumed run's flags
    restored from its checkpoint), the trained ``model``, the ``history`` (all epochs,
    a resumed run's earlier ones included), the run's folder ``out`` with its
    ``last`` checkpoint and ``best`` one (None without validation data), and the
    ``test`` scores ``{"loss", "accuracy", "images"}`` (None when not asked for)."""

    config: RunConfig
    model: Module
    history: History
    out: str
    last: str
    best: str | None
    test: dict | None

    @property
    def final(self) -> dict:
        """The last epoch's row of the history: loss, accuracy, val_loss, val_accuracy,
        lr, time."""
        return dict(self.history.rows[-1])


@dataclass
class RunStatus:
    """How far :func:`run_training` got, for a caller that reports a failure or an
    interrupt: the ``phase`` it was in ("building the model", "loading the data",
    "training", "testing"), the ``config`` in effect, the model's ``(name,
    in_channels, batch_norm, input_shape)`` for a memory estimate, and the ``saver``
    that knows what the run's last.npz holds (None before training)."""

    phase: str | None = None
    config: RunConfig | None = None
    memory_model: tuple | None = None
    saver: SaveEachEpoch | None = None


def one_line_warning(message, category, filename, lineno, line=None):
    """How gpunet's command-line processes (the CLI, tune's workers) print a warning."""
    return f"gpunet: warning: {message}\n"


def _typed(config: RunConfig) -> set[str]:
    return {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != f.default}


def _check_training_images(config: RunConfig, images: int, processes: int) -> None:
    """Enough training images for a batch on every process (two with batch norm, for
    its variance): found before the run is announced, not by ``fit`` after it."""
    needed = (2 if config.batch_norm else 1) * processes
    if images >= needed:
        return
    why = ("--batch-norm needs at least 2" + (" per process" if processes > 1 else "")
           + ", for its variance") if config.batch_norm else \
        (f"each of the {processes} processes needs one" if processes > 1
         else "training needs one")
    raise RunConfigError(f"--dataset {config.dataset}: {images} training image(s) left after "
                         + (f"--limit {config.limit} and " if config.limit else "")
                         + f"--dev-size {config.dev_size}; {why}")


def run_training(config: RunConfig, callbacks=(), *, test: bool = True, announce: bool = True,
                 given=None, status: RunStatus | None = None) -> RunResult:
    """Train as ``gpunet train`` does for ``config`` and return the :class:`RunResult`.

    ``callbacks`` run after the run's own (checkpoints, metrics). ``given`` names the
    flags the caller set on purpose (default: those that differ from RunConfig's
    defaults): with ``config.resume`` one of them with another value than the
    checkpoint's is refused, and ``epochs``/``data_root`` given keep their new value.
    ``test=False`` skips the test set; ``announce`` prints the one line saying what
    trains where, and the per-epoch lines. ``status`` (a :class:`RunStatus`) is kept
    up to date for a caller that reports failures; a KeyboardInterrupt is left to
    the caller. Refused flags, folders and data raise :class:`RunConfigError`.

    As ``gpunet train``, it leaves the process on the run's device
    (``gpunet.set_device``) and its random streams seeded from ``config.seed``
    (``gpunet.manual_seed``): a caller that needs its own back sets them again.
    """
    status = RunStatus() if status is None else status
    given = _typed(config) if given is None else set(given)
    status.config = config
    config.check()
    use_device(config.device)
    distributed = config.distributed
    world = gpunet_distributed.init() if distributed else None
    processes = 1 if world is None else world.size
    announce = announce and (world is None or world.is_root)
    check_out(config)
    saved = None
    if config.resume:
        config, saved = resume_settings(config, given, processes)
        status.config = config
    last = os.path.join(config.out, "last.npz")
    if saved is not None and saved["epoch"] >= config.epochs:
        raise RunConfigError(f"--epochs {config.epochs}: {last} has done {saved['epoch']} "
                             f"epoch(s) already; give more to continue it")
    backend.manual_seed(config.seed)

    status.phase = "building the model"
    image_shape = IMAGE_SHAPES[config.dataset]
    in_channels = image_shape[0]
    status.memory_model = (config.model, in_channels, config.batch_norm, image_shape)
    model = build_model(config.model, in_channels, config.batch_norm)
    check_model_input(f"--model {config.model}", INPUT_SHAPES[config.model], model,
                      config.dataset, models_for(config.dataset))
    if config.sync_batch_norm:
        gpunet_distributed.sync_batch_norm(model)
    optimizer = build_optimizer(config, model.parameters())

    status.phase = "loading the data"
    (x, y), (x_test, y_test) = load_dataset(config.dataset, config.data_root)
    if tuple(x.shape[1:]) != image_shape:
        raise RunConfigError(f"--dataset {config.dataset}: expected {image_shape} images, the "
                             f"files hold {tuple(x.shape[1:])}")
    if config.limit:
        x, y = x[:config.limit], y[:config.limit]
    dev_size = held_out(len(x), config.dev_size)
    if dev_size > len(x) // 2:
        raise RunConfigError(f"--dev-size {config.dev_size} would leave "
                             f"{max(len(x) - dev_size, 0)} of the {len(x):,} training images "
                             f"for training; hold out at most half (--dev-size {len(x) // 2} "
                             "or less, 0 for none)")
    # before the split, whose fractions need a training image
    _check_training_images(config, len(x) - dev_size, processes)
    dev_fraction = dev_size / len(x)
    (x, y), (x_dev, y_dev), _ = train_dev_test_split(x, y, (1 - dev_fraction, dev_fraction, 0),
                                                     seed=config.seed)
    # the optimizer steps of the whole run, for the per-step cosine schedule
    total_steps = config.epochs * -(-len(x) // (config.batch_size * processes))
    if config.schedule == "cosine" and config.warmup >= total_steps:
        raise RunConfigError(f"--warmup {config.warmup}: the run has {total_steps} steps "
                             f"({config.epochs} epoch(s) of {total_steps // config.epochs}); "
                             "warm up for fewer")
    schedule = build_schedule(config, optimizer, total_steps)
    stats = Standardize().fit(to_float(x))
    x, x_dev, x_test = (prepare(a, stats) for a in (x, x_dev, x_test))

    meta = {"architecture": config.model, "batch_norm": config.batch_norm,
            "dataset": config.dataset, "in_channels": int(in_channels),
            "standardize": stats.state_dict(), "seed": config.seed, "processes": processes,
            "global_batch": config.batch_size * processes,
            "flags": {name: getattr(config, name) for name in SAVED_FLAGS + RESUME_FLAGS}}
    history, initial_epoch = History(), 0
    if saved is not None:
        load(last, model, optimizer)
        history, initial_epoch = History.from_dict(saved["history"]), saved["epoch"]
        if schedule is not None and saved.get("schedule"):
            schedule.load_state_dict(saved["schedule"])
    val = (x_dev, y_dev) if len(x_dev) else None
    status.saver = SaveEachEpoch(config.out, meta, resumed=saved)
    run_callbacks = [status.saver]
    best = None
    if val is not None:
        best = os.path.join(config.out, "best.npz")
        keep_best = ModelCheckpoint(best, **meta)
        if history.rows:  # resumed: best.npz already holds the best so far
            keep_best.best = max(history["val_accuracy"])
        run_callbacks.append(keep_best)
    if announce:
        where = f"{backend.get_device()} ({backend.device_name(backend.get_device())})"
        if world is not None:
            statistics = "all processes' rows" if config.sync_batch_norm \
                else "each process's rows"
            where = (f"{world.size} processes, batch {config.batch_size} each, rank 0 on "
                     f"{where}" + (f"; batch norm uses the statistics of {statistics}"
                                   if config.batch_norm else ""))
        print(f"training {config.model} on {config.dataset} ({len(x):,} images, "
              f"{len(x_dev):,} for validation) on {where}", flush=True)
    if config.overwrite and (world is None or world.is_root):
        # only now: every check above has passed, so a refused run leaves the old one
        remove_earlier_run(config.out)
    status.phase = "training"
    fit(model, SoftmaxCrossEntropy(), optimizer, (x, y), config.epochs, config.batch_size,
        val_data=val, schedule=schedule, callbacks=run_callbacks + list(callbacks),
        progress=(config.progress or "epochs") if announce else config.progress,
        history=history, initial_epoch=initial_epoch,
        augment=(lambda batch: horizontal_flip(batch, config.flip)) if config.flip else None,
        distributed=distributed, clip_grad_norm=config.clip_grad_norm)
    scores = None
    if test:
        status.phase = "testing"
        scores = dict(evaluate(model, (x_test, y_test), batch_size=config.batch_size,
                               world=world), images=len(x_test))
    return RunResult(config, model, history, config.out, last, best, scores)
