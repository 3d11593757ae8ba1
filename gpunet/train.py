"""The training loop of the notes: epochs of shuffled mini-batches, forward,
cost, backward, update; plus evaluation. The history and the callbacks are
re-exported from :mod:`gpunet.history` and :mod:`gpunet.callbacks`.
"""
from __future__ import annotations

import itertools
import math
import sys
import time

from . import _checks
from .backend import (
    batch_shard,
    device_of,
    device_scope,
    get_array_module,
    get_rng_state,
    is_out_of_memory,
    release_cached_memory,
    to_device,
    tune_cpu_allocator,
)
from .callbacks import Callback, EarlyStopping, ModelCheckpoint, Run
from .data.batching import minibatches
from .data_parallel import processes_for
from .history import History
from .losses import SoftmaxCrossEntropy
from .nn import Module
from .nn.module import backward_params
from .nn.normalization import _BatchNorm
from .nn.utils import clip_grad_norm_

__all__ = ["fit", "evaluate", "train_step", "History", "Callback", "EarlyStopping",
           "ModelCheckpoint", "NonFiniteError", "OutOfMemoryError", "Run"]

# fit's progress: a bar and a line per epoch, the lines alone (Keras' verbose=2), nothing
PROGRESS = (True, "epochs", False)


class NonFiniteError(FloatingPointError):
    """Training produced NaN or Inf; the message says where."""


class OutOfMemoryError(MemoryError):
    """A training step or an evaluation ran out of memory: ``where`` it happened (e.g.
    ``"epoch 2, step 5"``), whether it was the GPU's memory (``gpu``: CuPy's
    OutOfMemoryError) or the host's (NumPy's MemoryError), the ``batch`` size and
    the allocator's own words (``detail``)."""

    def __init__(self, where: str, gpu: bool, batch: int, detail: str):
        super().__init__(f"{where}: the {'GPU' if gpu else 'host'} ran out of memory with a "
                         f"batch of {batch} ({detail}); try a smaller batch_size")
        self.where, self.gpu, self.batch, self.detail = where, gpu, batch, detail


def _out_of_memory(where: str, exc: MemoryError, batch: int) -> OutOfMemoryError:
    """``exc`` said as :class:`OutOfMemoryError`; frees what CuPy's pool caches."""
    gpu = is_out_of_memory(exc)
    if gpu:
        release_cached_memory()
    return OutOfMemoryError(where, gpu, batch, str(exc))


def _check_data(name, data, model):
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"{name}: expected an (x, y) pair of arrays")
    x, y = data
    for part, array in (("x", x), ("y", y)):
        if not (hasattr(array, "shape") and hasattr(array, "dtype")):
            raise TypeError(f"{name}: {part} must be a NumPy or CuPy array, got "
                            f"{type(array).__name__} (convert with numpy.asarray)")
    if len(x) != len(y):
        raise ValueError(f"{name}: x has {len(x)} examples but y has {len(y)}")
    if len(x) == 0:
        raise ValueError(f"{name}: no examples")
    dtype = model.parameters()[0].data.dtype if model.parameters() else x.dtype
    if x.dtype != dtype:
        raise TypeError(f"{name}: x is {x.dtype} but the model is {dtype}; convert first "
                        f"(gpunet.data.transforms.to_float for uint8 images)")


def _has_batch_norm(model) -> bool:
    return any(isinstance(m, _BatchNorm) for _, m in model.named_modules())


def _check_forward(name, model, x_few) -> None:
    """One eval-mode forward pass of a few examples (the model's mode is restored),
    so that data the model cannot take fails before training, not after an epoch."""
    device = device_of(model.parameters()[0].data) if model.parameters() else None
    was_training = model.training
    model.eval()
    try:
        model.forward(to_device(x_few, device) if device is not None else x_few)
    except (ValueError, TypeError) as exc:
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise kind(f"{name}: the model cannot take these examples: {exc}") from None
    finally:
        model.train(was_training)


def _accuracy_count(outputs, targets) -> int:
    """Correct predictions for integer labels or one-hot (probability) rows; 0 for
    targets that are not classes (regression)."""
    if outputs.ndim != 2:
        return 0
    if targets.dtype.kind in "iu" and targets.ndim == 1:
        return int((outputs.argmax(axis=1) == targets).sum())
    if targets.shape == outputs.shape and targets.dtype.kind == "f" and outputs.shape[1] > 1 \
            and bool(abs(targets.sum(axis=1) - 1).max() < 1e-6):  # rows of class probabilities
        return int((outputs.argmax(axis=1) == targets.argmax(axis=1)).sum())
    return 0


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # disable=None: tqdm switches itself off when stderr is not a terminal (CI, logs)
    return tqdm(total=total, desc=desc, leave=False, unit="batch", file=sys.stderr,
                dynamic_ncols=True, disable=None)


def _ask_callbacks(callbacks, hook: str, run: Run, processes) -> bool:
    """Call ``hook`` on every callback that has it (all of them, even after one asks
    to stop); ``True`` when any asks to stop (on any of the ``processes``)."""
    answers = [bool(getattr(cb, hook)(run)) for cb in callbacks if hasattr(cb, hook)]
    return processes.any(any(answers))


def _finite(xp, a) -> bool:
    return bool(xp.isfinite(a).all())


def _first_non_finite_layer(model, x) -> str:
    """Replay the forward pass, each leaf layer's output checked as it comes, to find
    where NaN or Inf appear first (whatever the model's structure)."""
    xp = get_array_module(x)
    if not _finite(xp, x):
        return "the input batch"
    found = []
    leaves = [(name, m) for name, m in model.named_modules() if next(m.children(), None) is None]

    def checked(name, layer):
        def forward(inputs):
            out = type(layer).forward(layer, inputs)
            if not found and not _finite(xp, out):
                found.append(f"layer {name or type(layer).__name__} ({type(layer).__name__})")
            return out
        return forward

    for name, layer in leaves:
        object.__setattr__(layer, "forward", checked(name, layer))
    try:
        model.forward(x)
    finally:
        for _, layer in leaves:
            object.__delattr__(layer, "forward")
    return found[0] if found else "the model's output"


def train_step(model, loss, optimizer, xb, yb, where: str = "train_step",
               check_finite: bool = True, world=None, clip_grad_norm: float | None = None):
    """One step: forward, cost, backward (without the input gradient, which nothing
    uses), the gradients averaged over ``world``'s ranks if given
    (:mod:`gpunet.distributed`), update; returns ``(loss, correct predictions)`` of
    this process's batch. ``fit``, ``gpunet bench`` and the memory runs all take this
    step. With ``check_finite`` it raises
    :class:`NonFiniteError` naming the step (``where``) and the first layer (or
    parameter gradient) where NaN or Inf appeared, before anything is updated.
    ``clip_grad_norm`` scales the (averaged) gradients to that total 2-norm at most
    before the update (:func:`gpunet.nn.utils.clip_grad_norm_`)."""
    with device_scope(xb):  # on the model's GPU, whichever device is current
        return _train_step(model, loss, optimizer, xb, yb, where, check_finite, world,
                           clip_grad_norm)


def _train_step(model, loss, optimizer, xb, yb, where, check_finite, world, clip_grad_norm):
    optimizer.zero_grad()
    out = model.forward(xb)
    xp = get_array_module(out)
    if check_finite and not _finite(xp, out):
        raise NonFiniteError(f"{where}: the outputs became NaN or Inf, first at "
                             f"{_first_non_finite_layer(model, xb)}; lower the learning rate "
                             "or check the data")
    value = loss.forward(out, yb)
    if check_finite and not math.isfinite(value):
        raise NonFiniteError(f"{where}: the loss became {value}")
    backward_params(model, loss.backward())
    if world is not None:
        world.all_reduce_gradients(model)
    if check_finite:
        named = list(model.named_parameters())
        if named and not bool(xp.stack([xp.isfinite(p.grad).all() for _, p in named]).all()):
            name = next(n for n, p in named if not _finite(xp, p.grad))
            raise NonFiniteError(f"{where}: the gradient of {name} became NaN or Inf")
    if clip_grad_norm is not None:
        clip_grad_norm_(model, clip_grad_norm)
    optimizer.step()
    return value, _accuracy_count(out, yb)


def fit(model: Module, loss, optimizer, train_data, epochs: int, batch_size: int,
        val_data=None, schedule=None, callbacks=(), progress: bool | str = True, augment=None,
        history: History | None = None, initial_epoch: int = 0,
        shuffle: bool = True, drop_last: bool | None = None,
        distributed: bool = False, clip_grad_norm: float | None = None) -> History:
    """Train ``model`` for epochs ``initial_epoch + 1 .. epochs``.

    Each epoch visits ``train_data = (x, y)`` in a shuffled order fixed by the
    seed of ``gpunet.manual_seed`` and the epoch number (so a resumed run sees the
    same batches), moving batches to the model's device; ``augment(x_batch)`` may
    transform them. Evaluates on ``val_data`` after each epoch at ``batch_size``
    (after the callbacks' ``on_validation_start``), steps ``schedule`` (after every
    optimizer step instead where ``schedule.per_step``), then runs the callbacks'
    ``on_epoch_end``. ``clip_grad_norm`` clips each step's gradients to that 2-norm.
    Running out of GPU or host memory raises
    :class:`OutOfMemoryError` naming the step or the validation. A ``history``
    saved mid-epoch (``history.partial``) resumes at the batch where it stopped.
    Stops with :class:`NonFiniteError` at the first NaN or Inf output, loss or
    gradient. ``progress``: ``True`` shows a bar and a line per epoch, ``"epochs"``
    the lines alone, ``False`` nothing. ``drop_last`` drops each epoch's
    last, smaller batch; by default (``None``) only a last batch of one example when
    the model has batch norm, whose training statistics need two.

    Checked before the first step: the data, ``batch_size``, a forward pass of two
    validation examples (so a wrong ``val_data`` shape fails now, not after an
    epoch) and every callback's ``on_fit_start``.

    ``distributed=True`` trains data-parallel on the processes ``mpiexec`` started
    (:mod:`gpunet.distributed`): ``batch_size`` rows per process, gradients averaged
    every step, metrics summed over the processes. Every process must pass the same
    model and data (checked) and the same seed; rank 0's parameters start everyone.
    Only rank 0 shows progress, and ``Run.writer`` is true there only: callbacks that
    write files check it. Batch norm uses each process's batch statistics.
    """
    _check_data("train_data", train_data, model)
    _checks.positive_int("batch_size", batch_size)
    if progress not in PROGRESS:
        raise ValueError(f"progress: expected True (a bar and a line per epoch), 'epochs' "
                         f"(the lines alone) or False, got {progress!r}")
    if val_data is not None:
        _check_data("val_data", val_data, model)
        _check_forward("val_data", model, val_data[0][:2])
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs: expected a non-negative int, got {epochs!r}")
    device = device_of(model.parameters()[0].data)
    tune_cpu_allocator()  # each step reuses the last one's freed memory (backend.py says why)
    job = processes_for(distributed, model, train_data, val_data)
    world, processes = job.world, job.size
    lines = bool(progress) and job.is_root
    progress = progress is True and job.is_root
    history = History() if history is None else history
    run = Run(model, optimizer, schedule, history, initial_epoch, len(history.steps),
              has_val_data=val_data is not None, writer=job.is_root)
    for callback in callbacks:
        if hasattr(callback, "on_fit_start"):
            callback.on_fit_start(run)
    x, y = train_data
    global_batch = batch_size * processes  # each process trains on its batch_size rows
    batch_norm = _has_batch_norm(model)
    if batch_norm and batch_size == 1:
        raise ValueError("batch_size 1: batch norm needs at least 2 examples per batch (and "
                         "process) in training, for its variance")
    if drop_last is None:  # a last batch whose processes' slices are 1 row: batch norm fails
        drop_last = batch_norm and (len(x) % global_batch) // processes == 1
    n_batches = len(x) // global_batch if drop_last else -(-len(x) // global_batch)
    if len(x) // global_batch == 0 and (drop_last or len(x) < processes):
        needs = ("at least 2 rows per process, which batch norm needs in training"
                 if batch_norm else f"a row for each of the {processes} processes"
                 if len(x) < processes else f"{global_batch} rows (drop_last=True)")
        raise ValueError(f"train_data: {len(x)} example(s) make no training batch of {needs}; "
                         f"give at least {2 * processes if batch_norm else global_batch}")
    seed = get_rng_state()["seed"]
    per_step_schedule = schedule is not None and getattr(schedule, "per_step", False)

    for epoch in range(initial_epoch + 1, epochs + 1):
        model.train()
        resumed = history.partial if history.partial and history.partial["epoch"] == epoch \
            else None
        totals = dict(resumed) if resumed else {"epoch": epoch, "batch": 0, "loss_sum": 0.0,
                                                "correct": 0, "seen": 0, "time": 0.0,
                                                "lr": optimizer.lr}
        start = time.perf_counter() - totals["time"]
        bar = _progress_bar(n_batches, f"epoch {epoch}/{epochs}", progress)
        batches = itertools.islice(
            minibatches(x, y, global_batch, shuffle=shuffle, seed=[seed, epoch], device=device,
                        drop_last=drop_last),
            totals["batch"], None)
        stopped = False
        for xb, yb in batches:
            if augment is not None:
                xb = augment(xb)
            where = f"epoch {epoch}, step {totals['batch'] + 1}"
            shard = job.shard(len(xb))
            if shard[0] == shard[1]:  # a last global batch with fewer rows than processes
                totals["batch"] += 1
                continue
            try:
                with batch_shard(*shard, len(xb)):
                    xb, yb = xb[shard[0]:shard[1]], yb[shard[0]:shard[1]]
                    value, correct = train_step(model, loss, optimizer, xb, yb, where,
                                                world=world, clip_grad_norm=clip_grad_norm)
            except MemoryError as exc:  # CuPy's OutOfMemoryError is one too
                raise _out_of_memory(where, exc, len(xb)) from None
            value, correct, seen = job.batch_metrics(value, correct, len(xb))
            totals.update(batch=totals["batch"] + 1, loss_sum=totals["loss_sum"] + value * seen,
                          correct=totals["correct"] + correct, seen=totals["seen"] + seen,
                          time=time.perf_counter() - start)
            if per_step_schedule:
                schedule.step()
            history.steps.append(value)
            history.partial = dict(totals)
            run.step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{totals['loss_sum'] / totals['seen']:.4f}",
                                acc=f"{totals['correct'] / totals['seen']:.4f}",
                                img_s=f"{totals['seen'] / totals['time']:,.0f}")
            if _ask_callbacks(callbacks, "on_step_end", run, job):
                stopped = True
                break
        if bar is not None:
            bar.close()
        if stopped:
            break
        seen = totals["seen"]
        row = {"epoch": epoch, "loss": totals["loss_sum"] / seen,
               "accuracy": totals["correct"] / seen, "val_loss": math.nan,
               "val_accuracy": math.nan, "lr": totals["lr"], "time": totals["time"]}
        job.end_epoch(model)
        if val_data is not None:
            # history.partial still holds the finished epoch: what a checkpoint saved
            # now resumes from, should the validation fail
            for callback in callbacks:
                if hasattr(callback, "on_validation_start"):
                    callback.on_validation_start(run)
            try:  # at the training batch size: what fitted in training fits here
                scores = evaluate(model, val_data, batch_size=batch_size, loss=loss,
                                  world=world)
            except MemoryError as exc:
                if not isinstance(exc, OutOfMemoryError):
                    exc = _out_of_memory("evaluating", exc, batch_size)
                raise OutOfMemoryError(f"epoch {epoch}, validation", exc.gpu, exc.batch,
                                       exc.detail) from None
            row["val_loss"], row["val_accuracy"] = scores["loss"], scores["accuracy"]
        history.partial = None
        history.rows.append(row)
        run.epoch = epoch
        if schedule is not None and not per_step_schedule:
            schedule.step()
        if lines:
            print(_epoch_line(row, epochs, seen), file=sys.stderr, flush=True)
        if _ask_callbacks(callbacks, "on_epoch_end", run, job):
            break
    return history


def _epoch_line(row, epochs, seen) -> str:
    line = (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  "
            f"accuracy {row['accuracy']:.4f}")
    if not math.isnan(row["val_loss"]):
        line += f"  val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}"
    return line + f"  lr {row['lr']:.3g}  {row['time']:.1f}s ({seen / row['time']:,.0f} img/s)"


def evaluate(model: Module, data, batch_size: int = 256, loss=None, world=None) -> dict:
    """``{"loss", "accuracy"}`` of ``model`` on ``data = (x, y)`` in eval mode (the
    model's mode is restored afterwards), ``batch_size`` examples at a time (running
    out of memory raises :class:`OutOfMemoryError` saying so). ``loss`` defaults to
    softmax cross-entropy. With a distributed ``world`` each rank evaluates its slice
    and the sums are combined."""
    _check_data("data", data, model)
    loss = SoftmaxCrossEntropy() if loss is None else loss
    device = device_of(model.parameters()[0].data)
    if world is not None:
        start, stop = (len(data[0]) * r // world.size for r in (world.rank, world.rank + 1))
        data = (data[0][start:stop], data[1][start:stop])
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    try:
        for xb, yb in minibatches(*data, batch_size, shuffle=False, device=device):
            with device_scope(xb):
                out = model.forward(xb)
                total += loss.forward(out, yb) * len(xb)
                correct += _accuracy_count(out, yb)
    except MemoryError as exc:  # CuPy's OutOfMemoryError is one too
        raise _out_of_memory(f"evaluating {len(data[0]):,} examples", exc,
                             min(batch_size, len(data[0]))) from None
    finally:
        model.train(was_training)
    n = len(data[0])
    if world is not None:
        total, correct, n = world.sum([total, correct, n])
    return {"loss": total / n, "accuracy": correct / n}

