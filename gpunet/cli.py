"""``gpunet`` / ``python -m gpunet``: train, evaluate, summary, gradcheck, bench, info.

Bad arguments or files print one line and exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import traceback
import warnings

import numpy

from . import __version__, backend, config
from . import distributed as gpunet_distributed
from .data import DatasetError, load_cifar10, load_fashion_mnist, load_mnist, synthetic_images
from .data.batching import train_dev_test_split
from .data.datasets import cache_dir
from .data.transforms import Standardize, horizontal_flip, to_float
from .io import CheckpointError, load, read_checkpoint
from .losses import SoftmaxCrossEntropy
from .models import MODELS, summary
from .optim import SGD, Adam, AdamW, Momentum, RMSProp, decay_groups, schedules
from .train import History, ModelCheckpoint, NonFiniteError, Run, evaluate, fit

DATASETS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10,
            "synthetic": lambda split=None: synthetic_images(split=split)}
# Each dataset's image shape (C, H, W), known from its name: a model that cannot take
# it is refused before any file is read.
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32),
                "synthetic": (3, 32, 32)}
INPUT_SHAPES = {"lenet5": (1, 32, 32), "lenet5_notes": (3, 32, 32), "alexnet": (3, 224, 224),
                "vgg16": (3, 224, 224), "alexnet_cifar": (3, 32, 32), "vgg_cifar": (3, 32, 32),
                "resnet18_cifar": (3, 32, 32)}
SCHEDULES = {"inverse-time": lambda o, a: schedules.InverseTimeDecay(o, a.decay),
             "exponential": lambda o, a: schedules.ExponentialDecay(o, a.decay),
             "inverse-sqrt": lambda o, a: schedules.InverseSqrtDecay(o, a.decay),
             "step": lambda o, a: schedules.StepDecay(o, a.step_size, a.decay),
             # per optimizer step, over the run's steps (a.total_steps, known once the
             # data is loaded)
             "cosine": lambda o, a: schedules.CosineDecay(o, a.total_steps, a.warmup,
                                                          per_step=True)}
# Flags a resumed run takes from its checkpoint: given again with another value,
# they would change the data split or the update rule mid-run.
RUN_FLAGS = ("model", "batch_norm", "dataset", "optimizer", "lr", "momentum", "weight_decay",
             "schedule", "decay", "step_size", "batch_size", "limit", "dev_size", "flip", "seed",
             "sync_batch_norm", "warmup", "clip_grad_norm")
# Flags a resumed run also takes from its checkpoint, unless typed again: typed, they
# may differ (more epochs; the data moved), as neither changes the steps taken so far.
RESUME_FLAGS = ("epochs", "data_root")
RUN_FILES = ("last.npz", "best.npz", "metrics.csv", "curves.png")
# save()'s temporary files (io.py), left behind only by a process killed mid-save
RUN_TEMPORARY = (".tmp-", ".npz")


class UsageError(Exception):
    """A bad argument or file: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)

    def add_argument(self, *args, **kwargs):
        """Every option's help says its default (``--momentum 0.9`` applies to ``--optimizer
        sgd`` too, which a PyTorch user does not expect); flags and options without one
        say nothing."""
        action = super().add_argument(*args, **kwargs)
        if (action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS)
                and "%(default)" not in (action.help or "")):
            action.help = (f"{action.help} " if action.help else "") + "(default: %(default)s)"
        return action


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _finite_float(text):
    """A float flag's type: nan and inf are refused here, so that no check after it
    (``not x >= 0``, ``x > 0``) can be passed by them."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _dev_size(text):
    """``--dev-size``: a count (``5000``, ``0`` for none) or a fraction of the training
    examples (``0.1``, Keras' ``validation_split``)."""
    try:
        return int(text)
    except ValueError:
        pass
    value = _finite_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a count (0 or more) or a fraction "
                                          f"between 0 and 1, got {text!r}")
    return value


def _shape(text):
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive sizes C,H,W, got {text!r}")
    return shape


def _add_run_arguments(p) -> None:
    """The flags that define a training run, shared by ``train`` and ``tune``."""
    p.add_argument("--model", choices=sorted(MODELS), default="lenet5")
    p.add_argument("--batch-norm", action="store_true",
                   help="LeNet-5 with batch norm after each conv and hidden FC layer")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-mnist")
    p.add_argument("--data-root", help="folder holding the dataset files")
    p.add_argument("--epochs", type=_positive_int, default=5)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--optimizer", choices=["sgd", "momentum", "rmsprop", "adam", "adamw"],
                   default="adam", help="adamw: Adam with --weight-decay decoupled (AdamW)")
    p.add_argument("--lr", type=_finite_float, default=1e-3)
    p.add_argument("--momentum", type=_finite_float, default=0.9,
                   help="momentum of sgd, beta of momentum and rmsprop")
    p.add_argument("--weight-decay", type=_finite_float, default=0.0,
                   help="L2 on the weights (adamw: decoupled decay)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES),
                   help="learning-rate decay per epoch (needs --decay), or cosine: "
                        "per step to 0 at the end of the run, after --warmup steps")
    p.add_argument("--decay", type=_finite_float,
                   help="the schedule's decay_rate (inverse-time: > 0), k (inverse-sqrt: "
                        "in (0, 1]) or factor (exponential, step: between 0 and 1)")
    p.add_argument("--step-size", type=_positive_int, default=10,
                   help="epochs between the step schedule's decays")
    p.add_argument("--warmup", type=int, default=0, metavar="N",
                   help="with --schedule cosine: raise the rate linearly to --lr over the "
                        "first N steps")
    p.add_argument("--clip-grad-norm", type=_finite_float, metavar="X",
                   help="scale each step's gradients to a total 2-norm of at most X")
    p.add_argument("--flip", type=_finite_float, default=0.0, metavar="P",
                   help="augment: flip each training image left-right with probability P")
    p.add_argument("--dev-size", type=_dev_size, default=0.1,
                   help="training examples held out for validation: a fraction (default "
                        "0.1) or a count (0: none); at most half of them")
    p.add_argument("--limit", type=_positive_int, help="use only this many training examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: $GPUNET_DEVICE, "
                   "else auto)")


def build_parser() -> Parser:
    parser = Parser(prog="gpunet", description="Train and inspect CNNs with gpunet.",
                    allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"gpunet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = sub.add_parser("train", help="train a model and report its test accuracy",
                           allow_abbrev=False)  # exact flags: --resume compares them
    parser.train_parser = train
    _add_run_arguments(train)
    train.add_argument("--out", default="runs/latest", help="folder for metrics and checkpoints")
    train.add_argument("--resume", action="store_true",
                       help="continue from OUT/last.npz with its run's settings (fails if it is "
                            "missing or corrupt)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an earlier run in OUT (without it, train refuses to)")
    train.add_argument("--no-progress", action="store_true",
                       help="no progress bar; one line per epoch still")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the processes of `mpiexec -n P gpunet train "
                            "...` (--batch-size per process; needs gpunet[mpi])")
    train.add_argument("--sync-batch-norm", action="store_true",
                       help="with --distributed: batch norm over all processes' rows "
                            "together (default: each process's own)")


    tune = sub.add_parser("tune", allow_abbrev=False,
                          help="random search over training hyperparameters (Optuna): "
                               "trials in parallel, pruning, --resume, coarse to fine")
    parser.tune_parser = tune
    _add_run_arguments(tune)
    tune.add_argument("--param", action="append", default=[], metavar="NAME=KIND:LOW:HIGH",
                      help="a hyperparameter to search, e.g. lr=log:1e-4:1, momentum=beta:0.9:"
                           "0.999, batch_size=pow2:32:256, optimizer=choice:sgd,adam "
                           "(KIND: log, beta, uniform, int, pow2, choice); repeatable")
    tune.add_argument("--space", metavar="FILE",
                      help='a JSON or YAML mapping of NAME: SPEC, e.g. {"lr": "log:1e-4:1"}')
    tune.add_argument("--trials", type=_positive_int, default=12,
                      help="trials in all (with --refine: in the new round)")
    tune.add_argument("--workers", type=_positive_int, default=1,
                      help="trial processes on this machine (each its own GPU where there "
                           "are several; CPU threads shared out)")
    tune.add_argument("--storage", help="an Optuna RDB URL that workers elsewhere can join "
                                        "(default: sqlite:///OUT/study.db)")
    tune.add_argument("--sampler", choices=["random", "tpe", "qmc"], default="random",
                      help="random sampling, as the notes advise (default), or Optuna's TPE "
                           "or quasi-Monte Carlo")
    tune.add_argument("--pruner", choices=["median", "none"], default="median",
                      help="stop trials whose validation accuracy falls below the median of "
                           "earlier trials at the same epoch (default)")
    tune.add_argument("--search-seed", type=int, default=0, help="the sampler's seed")
    tune.add_argument("--out", default="runs/tune", help="folder for the study and its trials")
    tune.add_argument("--resume", action="store_true",
                      help="continue the tuning run in OUT with its settings")
    tune.add_argument("--refine", metavar="OUT",
                      help="narrow each range around the best trials of the run in OUT and run "
                           "--trials more there")
    tune.add_argument("--overwrite", action="store_true",
                      help="replace an earlier tuning run in OUT")

    ev = sub.add_parser("evaluate", help="loss and accuracy of a checkpoint on a test set")
    ev.add_argument("checkpoint", help="a checkpoint, or a run's --out folder (its best.npz)")
    ev.add_argument("--dataset", choices=sorted(DATASETS))
    ev.add_argument("--data-root")
    ev.add_argument("--batch-size", type=_positive_int,
                    help="images per forward pass (default: the run's training batch size, "
                         "else 256)")
    ev.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: $GPUNET_DEVICE, "
                    "else auto)")

    sm = sub.add_parser("summary", help="print a model's layers, shapes and parameters")
    sm.add_argument("model", choices=sorted(MODELS))
    sm.add_argument("--input-shape", type=_shape, help="C,H,W (default: the model's own)")
    sm.add_argument("--batch-norm", action="store_true",
                    help="LeNet-5 with batch norm, as train --batch-norm builds it")
    sm.add_argument("--batch-size", type=_positive_int, default=1,
                    help="images for the mult-add and memory totals")

    gc = sub.add_parser("gradcheck", help="check a model's backward by centred differences")
    gc.add_argument("model", choices=sorted(MODELS))
    gc.add_argument("--input-shape", type=_shape)
    gc.add_argument("--batch-size", type=_positive_int, default=2)
    gc.add_argument("--max-per-param", type=_positive_int, default=5)
    # 1e-6 rather than the library's 1e-7: float64 rounding of the cost, ~1e-16 |J| / eps,
    # is then below 1e-7 of even small gradients, and the O(eps^2) error still negligible.
    gc.add_argument("--eps", type=_finite_float, default=1e-6)
    gc.add_argument("--seed", type=int, default=0)
    gc.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: $GPUNET_DEVICE, "
                    "else auto)")

    bn = sub.add_parser("bench", help="time layers and training steps beside PyTorch; "
                        "save the table as JSON")
    bn.add_argument("--net", action="append", choices=sorted({c.net for c in bench_cases()}),
                    help="only these nets' cases (repeatable; default: all)")
    bn.add_argument("--op", action="append", choices=["conv", "maxpool", "batchnorm", "step"],
                    help="only these ops (repeatable; default: all)")
    bn.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: $GPUNET_DEVICE, "
                    "else auto)")
    bn.add_argument("--rounds", type=_positive_int, default=5,
                    help="turns each library takes; the median is reported")
    bn.add_argument("--no-torch", action="store_true", help="time gpunet only")
    bn.add_argument("--memory", action="store_true",
                    help="also compare peak memory: a LeNet-5 epoch, an AlexNet-CIFAR step "
                         "(resident memory on the CPU, device memory on a GPU)")
    bn.add_argument("--images", type=_positive_int, default=60000,
                    help="images in the LeNet-5 epoch of --memory")
    bn.add_argument("--out", default=os.path.join("bench", "results"),
                    help="folder for the JSON report")

    sub.add_parser("info", help="backend, versions, device")
    return parser


# -- data ---------------------------------------------------------------------------------
def _load_dataset(name, root, split=None):
    """Both splits of ``name``, or (``split``) the one needed, its files alone read."""
    loader = DATASETS[name]
    return loader(root, split=split) if root is not None and name != "synthetic" else \
        loader(split=split)


def _check_model_input(who, model_name, model, dataset) -> None:
    """The model can take the dataset's images, found before any data is read (the
    shape is known from the dataset's name) by one zero image through it; the
    error says what the model takes, and which models take these images."""
    shape = IMAGE_SHAPES[dataset]
    try:
        summary(model, shape, print_table=False)
    except (ValueError, TypeError) as exc:
        takes = "x".join(map(str, INPUT_SHAPES[model_name]))
        fits = [m for m in sorted(MODELS) if m == "lenet5" or INPUT_SHAPES[m] == shape]
        raise UsageError(
            f"{who} takes {takes} images (C x H x W; gpunet summary "
            f"{model_name}), but {dataset} has {'x'.join(map(str, shape))} ones ({exc}); "
            f"models for them: {', '.join(fits)}") from None


def _prepare(x, stats: Standardize):
    return stats(to_float(x))


def _build_model(name, in_channels, batch_norm):
    if name == "lenet5":
        return MODELS[name](in_channels=in_channels, batch_norm=batch_norm)
    if batch_norm:
        raise UsageError(f"--batch-norm applies to lenet5 only, not {name}")
    return MODELS[name]()


OPTIMIZERS = {
    "sgd": lambda p, a: SGD(p, a.lr, momentum=a.momentum, weight_decay=a.weight_decay),
    "momentum": lambda p, a: Momentum(p, a.lr, beta=a.momentum, weight_decay=a.weight_decay),
    "rmsprop": lambda p, a: RMSProp(p, a.lr, beta=a.momentum, weight_decay=a.weight_decay),
    "adam": lambda p, a: Adam(p, a.lr, weight_decay=a.weight_decay),
    "adamw": lambda p, a: AdamW(p, a.lr, weight_decay=a.weight_decay)}


def _optimizer(args, params):
    if args.optimizer not in OPTIMIZERS:  # never a default: a name train does not know
        raise UsageError(f"--optimizer: expected one of {', '.join(OPTIMIZERS)}, got "
                         f"{args.optimizer!r}")
    if args.weight_decay:  # on weights only: biases and batch-norm vectors in a group at 0
        params = decay_groups(params, args.weight_decay)
    return OPTIMIZERS[args.optimizer](params, args)


# -- commands -------------------------------------------------------------------------------
class _SaveEachEpoch:
    """After every epoch: ``last.npz`` (for --resume), ``metrics.csv``, ``curves.png``."""

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


def _use_device(spec, quiet: bool = False) -> None:
    """``--device``, else ``$GPUNET_DEVICE``, else ``auto``; a bad value names its source.
    Where nobody asked for a device (``auto``) and the machine has no GPU at all, the
    CPU is no surprise: that is said once (a note in gpunet's cache), not on every
    command; any other reason for the fallback is said every time."""
    source = "--device"
    if spec is None:
        spec, source = config.get("device"), "GPUNET_DEVICE"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", backend.DeviceFallbackWarning)
            backend.set_device(spec)
    except ValueError as exc:
        raise UsageError(f"{source}: {str(exc).removeprefix('device: ')}") from None
    except backend.DeviceError as exc:
        given = f"GPUNET_DEVICE={spec}" if source == "GPUNET_DEVICE" else f"--device {spec}"
        raise backend.DeviceError(f"{given}: {exc}") from None
    for warning in caught:
        no_gpu = source == "GPUNET_DEVICE" and backend.NO_GPU in str(warning.message)
        if not quiet and not (no_gpu and _said_before("no-gpu")):
            warnings.warn(warning.message, stacklevel=2)


def _said_before(note: str) -> bool:
    """Whether ``note`` was said on this machine before; records it if not (and says
    ``False`` where the cache cannot be written, so that it is said again)."""
    path = os.path.join(cache_dir(), "notes", note)
    if os.path.exists(path):
        return True
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as file:
            file.write("said\n")
    except OSError:
        pass
    return False


# What each schedule's --decay must be for the rate never to rise above --lr.
DECAY_RULES = {
    "inverse-time": (lambda d: d > 0, "the inverse-time schedule divides the rate by "
                                      "1 + decay * epoch, so it must be > 0"),
    "exponential": (lambda d: 0 < d < 1, "the exponential schedule multiplies the rate by it "
                                         "every epoch, so it must be between 0 and 1"),
    "step": (lambda d: 0 < d < 1, "the step schedule multiplies the rate by it every "
                                  "--step-size epochs, so it must be between 0 and 1"),
    "inverse-sqrt": (lambda d: 0 < d <= 1, "the inverse-sqrt schedule sets the rate to "
                                           "decay / sqrt(epoch) * --lr, so it must be in (0, 1] "
                                           "(above 1 it raises the rate)")}
assert set(DECAY_RULES) | {"cosine"} == set(SCHEDULES)  # cosine takes no --decay


def _check_train_flags(args) -> None:
    """Every flag that can be checked before any data is read, named as typed."""
    problems = []
    if not args.lr > 0 or args.lr == float("inf"):
        problems.append(f"--lr: expected a number > 0, got {args.lr}")
    if not 0 <= args.momentum < 1:
        problems.append(f"--momentum: expected a number in [0, 1), got {args.momentum}")
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        problems.append("--resume continues the run in --out and --overwrite replaces it: "
                        "give one of them")
    if not args.weight_decay >= 0:
        problems.append(f"--weight-decay: expected a number >= 0, got {args.weight_decay}")
    if not 0 <= args.flip <= 1:
        problems.append(f"--flip: expected a probability in [0, 1], got {args.flip}")
    if args.dev_size < 0 or isinstance(args.dev_size, float) and not args.dev_size <= 0.5:
        problems.append(f"--dev-size: expected a count (0 or more) or a fraction in (0, 0.5] "
                        f"(at least as many left for training), got {args.dev_size}")
    if args.seed < 0:
        problems.append(f"--seed: expected 0 or more, got {args.seed}")
    if getattr(args, "sync_batch_norm", False) and not (args.distributed and args.batch_norm):
        problems.append("--sync-batch-norm: needs --distributed and --batch-norm")
    decays = args.schedule in DECAY_RULES
    if decays and args.decay is None:
        problems.append(f"--schedule {args.schedule} needs --decay (e.g. "
                        f"{'0.9' if args.schedule in ('exponential', 'step') else '0.5'})")
    elif args.decay is not None and not args.schedule:
        problems.append("--decay needs --schedule")
    elif args.decay is not None and not decays:
        problems.append(f"--decay: --schedule {args.schedule} takes none (it decays to 0 "
                        "at the end of the run)")
    elif decays and not DECAY_RULES[args.schedule][0](args.decay):
        problems.append(f"--decay: {DECAY_RULES[args.schedule][1]}, got {args.decay}")
    warmup = getattr(args, "warmup", 0)  # (a tuning run saved before the flag existed)
    if warmup < 0:
        problems.append(f"--warmup: expected 0 or more steps, got {warmup}")
    elif warmup and args.schedule != "cosine":
        problems.append("--warmup needs --schedule cosine")
    clip = getattr(args, "clip_grad_norm", None)
    if clip is not None and not clip > 0:
        problems.append(f"--clip-grad-norm: expected a number > 0, got {clip}")
    if args.limit and isinstance(args.dev_size, int) and args.dev_size > args.limit // 2:
        # a count against --limit now; a fraction, or the data's own size, is checked later
        problems.append(f"--dev-size {args.dev_size} would leave "
                        f"{max(args.limit - args.dev_size, 0)} of the {args.limit:,} training "
                        f"images of --limit {args.limit} for training; hold out at most half "
                        f"(--dev-size {args.limit // 2} or less, 0 for none)")
    if problems:
        raise UsageError("; ".join(problems))


def _check_out(args) -> None:
    """``--out`` is a folder we can write in, and holds no earlier run unless
    ``--resume`` or ``--overwrite`` says what to do with it."""
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out: {out} is a file; give a folder for the run")
    earlier = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    if earlier and not (args.resume or args.overwrite):
        raise UsageError(f"--out: {out} holds an earlier run ({', '.join(earlier)}); continue "
                         "it with --resume, choose another --out, or replace it with --overwrite")
    if args.resume and not os.path.isfile(os.path.join(out, "last.npz")):
        raise UsageError(f"--resume: no checkpoint at {os.path.join(out, 'last.npz')}")
    _check_writable("--out", out)


def _remove_earlier_run(out) -> list[str]:
    """``--overwrite``: remove every file the earlier run in ``out`` wrote (its
    checkpoints, metrics, curves, a save's leftover temporary file) and nothing else;
    called once the new run has passed every check that precedes training."""
    removed = []
    for name in sorted(os.listdir(out)):
        if name in RUN_FILES or (name.startswith(RUN_TEMPORARY[0])
                                 and name.endswith(RUN_TEMPORARY[1])):
            os.remove(os.path.join(out, name))
            removed.append(name)
    return removed


def _given_flags(subparser, argv) -> set[str]:
    """The ``dest`` of every flag of ``subparser`` typed on the command line."""
    given = set()
    for action in subparser._actions:
        for option in action.option_strings:
            if any(token == option or token.startswith(option + "=") for token in argv):
                given.add(action.dest)
    return given


def _flag(name: str, value) -> str:
    option = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return option if value else f"no {option}"
    return f"{option} {value}"


def _resume_settings(args, given: set[str], processes: int) -> dict:
    """The checkpoint's meta, after taking the run's flags from it: a flag typed
    again with another value is refused, naming each, as is another number of
    processes (it would change the global batch)."""
    last = os.path.join(args.out, "last.npz")
    header, _ = read_checkpoint(last)
    saved = header.get("meta", {})
    flags = saved.get("flags")
    if flags is None:  # a checkpoint from before flags were saved: the old checks
        if saved.get("architecture") != args.model or saved.get("dataset") != args.dataset:
            raise UsageError(f"--resume: {last} is a {saved.get('architecture')} on "
                             f"{saved.get('dataset')}, not {args.model} on {args.dataset}")
        if saved.get("seed", args.seed) != args.seed:
            raise UsageError(f"--resume: {last} was trained with --seed {saved['seed']}, "
                             f"not {args.seed}")
        return saved
    conflicts = [name for name in RUN_FLAGS
                 if name in given and name in flags and getattr(args, name) != flags[name]]
    if conflicts:
        raise UsageError(
            f"--resume: {last} was trained with "
            + ", ".join(_flag(n, flags[n]) for n in conflicts) + "; drop "
            + ", ".join(_flag(n, getattr(args, n)) for n in conflicts)
            + " to continue it, or start a new run in another --out")
    for name in RUN_FLAGS:
        if name in flags:
            setattr(args, name, flags[name])
    for name in RESUME_FLAGS:
        if name in flags and name not in given:
            setattr(args, name, flags[name])
    saved_processes = saved.get("processes", 1)
    if saved_processes != processes:
        batch = args.batch_size
        raise UsageError(
            f"--resume: {last} was trained by {_processes(saved_processes)} with a global batch "
            f"of {batch * saved_processes} (--batch-size {batch} each); this run has "
            f"{_processes(processes)}, a global batch of {batch * processes}; continue it "
            f"with: {_resume_command(args.out, saved_processes)}")
    return saved


def _processes(n: int) -> str:
    return f"{n} process{'es' if n != 1 else ''}"


def _resume_command(out, processes: int) -> str:
    """The command that continues the run in ``out`` as it was started: its flags come
    from the checkpoint, the process count from ``mpiexec``."""
    if processes > 1:
        return (f"mpiexec -n {processes} gpunet train --resume --out {shlex.quote(out)} "
                "--distributed")
    return f"gpunet train --resume --out {shlex.quote(out)}"


def run_training(args, callbacks=(), test: bool = True, saver_box: list | None = None,
                 announce: bool = True):
    """The work of ``gpunet train`` for parsed ``args``: ``(history, test scores or
    None)``, the scores with the number of test ``images``. ``callbacks`` run after
    the run's own (checkpoints, metrics); a KeyboardInterrupt is left to the caller,
    with the run's saver in ``saver_box``."""
    _check_train_flags(args)
    _use_device(args.device)
    distributed = getattr(args, "distributed", False)
    world = gpunet_distributed.init() if distributed else None
    processes = 1 if world is None else world.size
    announce = announce and (world is None or world.is_root)
    _check_out(args)
    saved = _resume_settings(args, args.given, processes) if args.resume else None
    last = os.path.join(args.out, "last.npz")
    if saved is not None and saved["epoch"] >= args.epochs:
        raise UsageError(f"--epochs {args.epochs}: {last} has done {saved['epoch']} "
                         f"epoch(s) already; give more to continue it")
    backend.manual_seed(args.seed)

    args.phase = "building the model"
    image_shape = IMAGE_SHAPES[args.dataset]
    in_channels = image_shape[0]
    args.memory_model = (args.model, in_channels, args.batch_norm, image_shape)
    model = _build_model(args.model, in_channels, args.batch_norm)
    _check_model_input(f"--model {args.model}", args.model, model, args.dataset)
    if getattr(args, "sync_batch_norm", False):
        gpunet_distributed.sync_batch_norm(model)
    optimizer = _optimizer(args, model.parameters())

    args.phase = "loading the data"
    (x, y), (x_test, y_test) = _load_dataset(args.dataset, args.data_root)
    if tuple(x.shape[1:]) != image_shape:
        raise UsageError(f"--dataset {args.dataset}: expected {image_shape} images, the files "
                         f"hold {tuple(x.shape[1:])}")
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    # a fraction as Keras' validation_split; the small epsilon keeps 0.1 * 30 at 3
    dev_size = int(len(x) * args.dev_size + 1e-9) if isinstance(args.dev_size, float) \
        else args.dev_size
    if dev_size > len(x) // 2:
        raise UsageError(f"--dev-size {args.dev_size} would leave {max(len(x) - dev_size, 0)}"
                         f" of the {len(x):,} training images for training; hold out at most "
                         f"half (--dev-size {len(x) // 2} or less, 0 for none)")
    dev_fraction = dev_size / len(x)
    (x, y), (x_dev, y_dev), _ = train_dev_test_split(x, y, (1 - dev_fraction, dev_fraction, 0),
                                                     seed=args.seed)
    # the optimizer steps of the whole run, for the per-step cosine schedule
    args.total_steps = args.epochs * -(-len(x) // (args.batch_size * processes))
    if args.schedule == "cosine" and args.warmup >= args.total_steps:
        raise UsageError(f"--warmup {args.warmup}: the run has {args.total_steps} steps "
                         f"({args.epochs} epoch(s) of {args.total_steps // args.epochs}); "
                         "warm up for fewer")
    schedule = SCHEDULES[args.schedule](optimizer, args) if args.schedule else None
    stats = Standardize().fit(to_float(x))
    x, x_dev, x_test = (_prepare(a, stats) for a in (x, x_dev, x_test))

    meta = {"architecture": args.model, "batch_norm": args.batch_norm, "dataset": args.dataset,
            "in_channels": int(in_channels), "standardize": stats.state_dict(),
            "seed": args.seed, "processes": processes,
            "global_batch": args.batch_size * processes,
            "flags": {name: getattr(args, name, False) if name == "sync_batch_norm"
                      else getattr(args, name) for name in RUN_FLAGS + RESUME_FLAGS}}
    history, initial_epoch = History(), 0
    if saved is not None:
        load(last, model, optimizer)
        history, initial_epoch = History.from_dict(saved["history"]), saved["epoch"]
        if schedule is not None and saved.get("schedule"):
            schedule.load_state_dict(saved["schedule"])
    val = (x_dev, y_dev) if len(x_dev) else None
    saver = _SaveEachEpoch(args.out, meta)
    if saver_box is not None:
        saver_box.append(saver)
    run_callbacks = [saver]
    if val is not None:
        best = ModelCheckpoint(os.path.join(args.out, "best.npz"), **meta)
        if history.rows:  # resumed: best.npz already holds the best so far
            best.best = max(history["val_accuracy"])
        run_callbacks.append(best)
    if announce:
        where = f"{backend.get_device()} ({backend.device_name(backend.get_device())})"
        if world is not None:
            statistics = "all processes' rows" if args.sync_batch_norm else "each process's rows"
            where = (f"{world.size} processes, batch {args.batch_size} each, rank 0 on {where}"
                     + (f"; batch norm uses the statistics of {statistics}"
                        if args.batch_norm else ""))
        print(f"training {args.model} on {args.dataset} ({len(x):,} images, "
              f"{len(x_dev):,} for validation) on {where}", flush=True)
    if args.overwrite and (world is None or world.is_root):
        # only now: every check above has passed, so a refused run leaves the old one
        _remove_earlier_run(args.out)
    args.phase = "training"
    fit(model, SoftmaxCrossEntropy(), optimizer, (x, y), args.epochs, args.batch_size,
        val_data=val, schedule=schedule, callbacks=run_callbacks + list(callbacks),
        progress=(not args.no_progress or "epochs") if announce else not args.no_progress,
        history=history, initial_epoch=initial_epoch,
        augment=(lambda batch: horizontal_flip(batch, args.flip)) if args.flip else None,
        distributed=distributed, clip_grad_norm=args.clip_grad_norm)
    if not test:
        return history, None
    args.phase = "testing"
    return history, dict(evaluate(model, (x_test, y_test), batch_size=args.batch_size,
                                  world=world), images=len(x_test))


def cmd_train(args) -> int:
    saver_box = []
    try:
        try:
            _, scores = run_training(args, saver_box=saver_box)
        except Exception as exc:
            if _interrupted(exc):  # Ctrl-C inside a library that wrapped it (an import)
                raise KeyboardInterrupt from exc
            raise
    except KeyboardInterrupt:
        if not saver_box:
            raise
        message = f"gpunet: interrupted; {_what_was_saved(args, saver_box[0].epoch)}"
        if not gpunet_distributed.end_interrupted(message):
            print(message, file=sys.stderr)
        return 130
    except OSError as exc:
        if not saver_box:  # before training: nothing of this run was written
            raise
        # a full disk, mid-run: the one line says what the last good checkpoint is
        raise OSError(f"{exc}; {_what_was_saved(args, saver_box[0].epoch)}") from None
    if not getattr(args, "distributed", False) or gpunet_distributed.world().is_root:
        print(f"test accuracy: {scores['accuracy']:.4f} (loss {scores['loss']:.4f}, "
              f"{scores['images']:,} images)")
    return 0


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised while handling, a KeyboardInterrupt (Python
    wraps one raised during a class's creation in a RuntimeError, as matplotlib's
    import showed)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _what_was_saved(args, epoch) -> str:
    out = args.out
    if epoch is None:
        return ("nothing of this run was saved (no epoch finished)"
                + ("" if args.overwrite else f"; {out} is as it was"))
    best = os.path.join(out, "best.npz")
    processes = gpunet_distributed.world().size if getattr(args, "distributed", False) else 1
    return (f"saved {os.path.join(out, 'last.npz')} after epoch {epoch}"
            + (f" and {best}" if os.path.exists(best) else "")
            + f"; continue with: {_resume_command(out, processes)}")


def _checkpoint_of(path) -> str:
    """``evaluate``'s argument: a checkpoint, or a run's folder, whose best.npz (the
    model the run kept) is taken, else its last.npz (a run without validation)."""
    if not os.path.isdir(path):
        return path
    for name in ("best.npz", "last.npz"):
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise UsageError(f"{path}: a folder without best.npz or last.npz; give a checkpoint or "
                     "a run's --out folder")


def cmd_evaluate(args) -> int:
    _use_device(args.device)
    args.checkpoint = _checkpoint_of(args.checkpoint)
    header, _ = read_checkpoint(args.checkpoint)
    meta = header.get("meta", {})
    if meta.get("architecture") not in MODELS:
        raise UsageError(f"{args.checkpoint}: does not say which model it holds")
    dataset = args.dataset or meta.get("dataset")
    if dataset not in DATASETS:
        raise UsageError("--dataset is needed: the checkpoint does not name one")
    args.phase = "building the model"
    in_channels = meta.get("in_channels", 1)
    args.memory_model = (meta["architecture"], in_channels, meta.get("batch_norm", False),
                         (in_channels, *INPUT_SHAPES[meta["architecture"]][1:]))
    model = _build_model(meta["architecture"], in_channels, meta.get("batch_norm", False))
    _check_model_input(f"{args.checkpoint} holds a {meta['architecture']}, which",
                       meta["architecture"], model, dataset)
    load(args.checkpoint, model, restore_rng=False)
    args.phase = "loading the data"
    x_test, y_test = _load_dataset(dataset, args.data_root, split="test")  # no training files
    args.memory_model = (*args.memory_model[:3], x_test.shape[1:])
    std = meta.get("standardize") or {"mean": [0.0], "std": [1.0]}
    stats = Standardize(numpy.asarray(std["mean"]), numpy.asarray(std["std"]))
    args.batch_size = args.batch_size or meta.get("flags", {}).get("batch_size") or 256
    args.phase = f"evaluating the {dataset} test set"
    scores = evaluate(model, (_prepare(x_test, stats), y_test), batch_size=args.batch_size)
    print(f"loss {scores['loss']:.4f}  accuracy {scores['accuracy']:.4f}  "
          f"({len(x_test):,} {dataset} test images)")
    return 0


def cmd_summary(args) -> int:
    backend.set_device("cpu")
    shape = args.input_shape or INPUT_SHAPES[args.model]
    summary(_build_model(args.model, shape[0], args.batch_norm), shape,
            batch_size=args.batch_size)
    return 0


def cmd_gradcheck(args) -> int:
    from .gradcheck import gradcheck
    _use_device(args.device)
    backend.manual_seed(args.seed)
    model = MODELS[args.model]().eval()
    shape = args.input_shape or INPUT_SHAPES[args.model]
    rng = numpy.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch_size, *shape))
    classes = model.parameters()[-1].shape[0]
    y = rng.integers(0, classes, args.batch_size)
    device = backend.get_device()
    x, y = backend.to_device(x, device), backend.to_device(y, device)
    report = gradcheck(model, SoftmaxCrossEntropy(), x, y, eps=args.eps,
                       max_per_param=args.max_per_param, seed=args.seed)
    print(report)
    return 0 if report.passed else 1


def bench_cases():
    from .benchmarks import CASES
    return CASES


def _check_writable(option: str, folder: str) -> None:
    """``folder`` exists or can be made, and takes a file: checked before a long run
    whose results would otherwise be lost at the end."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".gpunet-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise UsageError(f"{option}: cannot write in {folder} ({exc.strerror or exc})") from None


def cmd_bench(args) -> int:
    from . import benchmarks
    _use_device(args.device)  # the one rule: --device, else $GPUNET_DEVICE, else auto
    args.device = backend.get_device().name
    cases = [c for c in benchmarks.CASES if (not args.net or c.net in args.net)
             and (not args.op or c.op in args.op)]
    if not cases:
        raise UsageError(f"no benchmark case matches --net {args.net} --op {args.op}")
    _check_writable("--out", args.out)  # before the timings, which the report would lose
    report = {"environment": benchmarks.environment(args.device)}
    unusable = None if args.no_torch else benchmarks.torch_unusable(args.device)
    if unusable:
        print(f"gpunet: {unusable}", file=sys.stderr)
        args.no_torch = True
    report["rows"] = benchmarks.run(
        cases, args.device, rounds=args.rounds, with_torch=not args.no_torch,
        progress=lambda name: print(f"timing {name} ...", file=sys.stderr, flush=True))
    print(benchmarks.format_table(report["rows"]))
    if args.memory:
        report["memory"] = benchmarks.memory(images=args.images, with_torch=not args.no_torch,
                                             device=args.device)
        print()
        print(benchmarks.format_memory(report["memory"]))
    path = benchmarks.save(report, args.out, f"bench-{args.device.replace(':', '')}")
    print(f"saved {path}")
    return 0


def cmd_info(args) -> int:
    print(f"gpunet {__version__}  python {platform.python_version()}  numpy {numpy.__version__}")
    reason = backend.cuda_unavailable_reason()
    cupy = sys.modules.get("cupy")
    print(f"cupy: {cupy.__version__ if cupy else 'not installed'}")
    if reason is None:
        runtime = cupy.cuda.runtime
        props = runtime.getDeviceProperties(0)
        print(f"cuda: runtime {runtime.runtimeGetVersion()}, driver "
              f"{runtime.driverGetVersion()}, {runtime.getDeviceCount()} device(s)")
        print(f"device: cuda:0 {props['name'].decode()} (compute capability "
              f"{props['major']}.{props['minor']})")
    else:
        print(f"cuda: unavailable ({reason})")
    print(f"auto device: {'cuda:0' if reason is None else 'cpu'}")
    from .cuda import kernel_dir, kernels_enabled
    cache = os.environ.get("CUPY_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cupy",
                                                              "kernel_cache")
    print(f"kernels: {'on' if kernels_enabled() else 'off (GPUNET_KERNELS=0)'}, sources "
          f"{kernel_dir()}, compiled by CuPy into {cache}")
    # what train, evaluate and tune would run on, refused as they refuse it
    _use_device(None, quiet=True)
    spec = f"GPUNET_DEVICE={config.get('device')}" if config.is_set("device") else \
        "auto: GPUNET_DEVICE is not set"
    print(f"device: {backend.get_device().name} ({spec})")
    return 0


SEARCH_FLAGS = ("sampler", "pruner", "search_seed")  # kept in tune.json for --resume


def run_actions() -> dict:
    """The argparse actions of the flags that define a training run, by ``dest``: the
    types and choices ``gpunet train`` takes (tune checks its trials against them)."""
    parser = Parser(add_help=False)
    _add_run_arguments(parser)
    return {a.dest: a for a in parser._actions}


def run_defaults() -> dict:
    """The flags that define a training run and their defaults, as ``gpunet train``
    takes them (``dest`` names: ``batch_size``, ``lr`` ...)."""
    return {dest: action.default for dest, action in run_actions().items()}


def train_command(flags: dict) -> str:
    """``gpunet train`` with the flags in ``flags`` that differ from train's defaults."""
    parser = Parser(add_help=False)
    _add_run_arguments(parser)
    words = ["gpunet", "train"]
    for action in parser._actions:
        value = flags.get(action.dest, action.default)
        if value == action.default or value is None:
            continue
        option = action.option_strings[0]
        if isinstance(value, bool):
            words.append(option)
        else:
            # repr: the shortest text that reads back as the same float, so that the
            # command trains exactly what the trial trained
            words += [option, repr(value) if isinstance(value, float) else str(value)]
    return " ".join(words)


def cmd_tune(args) -> int:
    from . import tune
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
        return _fail("error: no trial completed ("
                     + ", ".join(f"{n} {state}" for state, n in counts.items())
                     + f"); the table above says why, {os.path.join(out, 'trials')} holds "
                     "their runs", 1)
    print(f"best: {best}")
    return 0


def _continue_tuning(args, study, run_flags, threads) -> None:
    """``--resume`` and ``--refine``: the settings from tune.json, the search flags
    typed again replacing theirs; ``--trials`` with --resume is the run's new total."""
    from . import tune
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


COMMANDS = {"train": cmd_train, "tune": cmd_tune, "evaluate": cmd_evaluate,
            "summary": cmd_summary, "gradcheck": cmd_gradcheck, "bench": cmd_bench,
            "info": cmd_info}


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"


# Arrays an optimizer keeps per parameter, beside the parameter and its gradient.
OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2, "rmsprop": 1, "momentum": 1, "sgd": 1}


def _memory_needs(args) -> str:
    """What the run's model needs, from its summary (built again on the CPU): its
    parameters (with gradients and optimizer state when training) and the
    activations of one forward pass at the batch size; "" where that is unknown."""
    name, in_channels, batch_norm, input_shape = args.memory_model
    previous = backend.get_device()
    try:
        backend.set_device("cpu")
        table = summary(_build_model(name, in_channels, batch_norm), input_shape,
                        print_table=False)
    except (MemoryError, ValueError):
        return ""
    finally:
        backend.set_device(previous)
    params = 4 * table.total_params  # float32
    line = f"{name} has {table.total_params:,} parameters ({_size(params)}"
    if args.command == "train":
        slots = OPTIMIZER_SLOTS[args.optimizer] if args.optimizer != "sgd" or args.momentum \
            else 0
        line += f", {_size(params * (2 + slots))} with gradients and {args.optimizer} state"
    activations = 4 * sum(row.size for row in table.rows) * args.batch_size
    return (line + f") and its activations take {_size(activations)} at batch "
            f"{args.batch_size} (gpunet summary {name})")


def _out_of_memory_message(args, exc: MemoryError) -> str:
    """The command, its phase, GPU or host memory, what the model needs and what to
    lower, in one line."""
    from .train import OutOfMemoryError
    gpu = exc.gpu if isinstance(exc, OutOfMemoryError) else backend.is_out_of_memory(exc)
    traceback.clear_frames(exc.__traceback__)  # they hold the model and the batch
    backend.release_cached_memory()
    command = getattr(args, "command", None) or "gpunet"
    phase = getattr(args, "phase", None) or "running"
    where = f" ({exc.where})" if isinstance(exc, OutOfMemoryError) else ""
    detail = exc.detail if isinstance(exc, OutOfMemoryError) else str(exc)
    memory = f"GPU memory on {backend.get_device().name}" if gpu else "host memory"
    needs = _memory_needs(args) if hasattr(args, "memory_model") else ""
    advice = []
    if hasattr(args, "batch_size") and phase not in ("building the model", "loading the data"):
        advice.append(f"lower --batch-size (now {args.batch_size})")
    if command == "train":
        advice.append("choose a smaller --model")
    if gpu:
        advice.append("use --device cpu")
    return (f"{command}: out of {memory} while {phase}{where}: {detail}"
            + (f"; {needs}" if needs else "") + (f"; {', or '.join(advice)}" if advice else ""))


def _check_launch(args) -> None:
    """Several processes from ``mpiexec -n N`` are one job for ``train --distributed``
    alone; any other command (or train without it) would run N independent copies
    writing the same files."""
    processes = gpunet_distributed.launched_processes()
    if processes == 1 or (args.command == "train" and args.distributed):
        return
    if args.command == "train":
        raise UsageError(f"started as one of {processes} MPI processes (mpiexec -n "
                         f"{processes}) without --distributed: each would train its own copy "
                         "into the same --out; add --distributed (or run without mpiexec)")
    raise UsageError(f"{args.command}: started as one of {processes} MPI processes (mpiexec -n "
                     f"{processes}); it runs in one process: start it without mpiexec"
                     + (" (--workers runs trials in parallel)" if args.command == "tune" else ""))


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"gpunet: warning: {message}\n"


def _fail(message: str, code: int) -> int:
    """Print the one-line error; in a distributed run, end every process with it (the
    others would wait for this one for ever)."""
    if gpunet_distributed.is_initialized() and gpunet_distributed.world().size > 1:
        gpunet_distributed.abort(message, code)
    # one write, newline included: under mpiexec (or PYTHONUNBUFFERED) two ranks' lines
    # would otherwise interleave, "line 1line 2\n\n"
    sys.stderr.write(f"gpunet: {message}\n")
    sys.stderr.flush()
    return code


def main(argv=None) -> int:
    warnings.formatwarning = _one_line_warning
    argv = sys.argv[1:] if argv is None else list(argv)
    args = None
    try:
        parser = build_parser()
        if not argv:  # as git: the commands, and a failure status
            print(parser.format_help(), end="")
            return 1
        args = parser.parse_args(argv)
        # --device replaces GPUNET_DEVICE; every other variable is refused here, whichever
        # the command reads, before anything starts
        config.check_environment(skip=("device",) if getattr(args, "device", None) else ())
        backend.tune_cpu_allocator()
        subparser = {"train": parser.train_parser, "tune": parser.tune_parser}.get(args.command)
        args.given = _given_flags(subparser, argv) if subparser else set()
        _check_launch(args)
        return COMMANDS[args.command](args)
    except (UsageError, DatasetError, CheckpointError, backend.DeviceError, ValueError,
            TypeError, OSError, ImportError, gpunet_distributed.DistributedError) as exc:
        return _fail(f"error: {exc}", 2)
    except NonFiniteError as exc:
        return _fail(f"training stopped: {exc}", 1)
    except MemoryError as exc:  # CuPy's OutOfMemoryError is one too
        return _fail(_out_of_memory_message(args, exc), 1)
    except KeyboardInterrupt:
        if not gpunet_distributed.end_interrupted("gpunet: interrupted"):
            print("gpunet: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one line, the traceback on request
        if _interrupted(exc):
            if not gpunet_distributed.end_interrupted("gpunet: interrupted"):
                print("gpunet: interrupted", file=sys.stderr)
            return 130
        if config.get("traceback"):
            raise
        return _fail(f"internal error: {type(exc).__name__}: {exc} (a bug in gpunet: please "
                     "report it; GPUNET_TRACEBACK=1 shows where)", 1)


