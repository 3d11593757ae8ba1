"""``RunConfig``: the flags that define a training run, their defaults and their checks.

The one source of what ``gpunet train`` takes: the CLI builds its options from these
fields (their defaults, the text each takes, their choices), ``gpunet tune`` checks
its trials against them, and :func:`gpunet.recipe.run_training` runs one.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

from ..models import MODELS

DATASET_NAMES = ("cifar10", "fashion-mnist", "mnist", "synthetic")
OPTIMIZER_NAMES = ("sgd", "momentum", "rmsprop", "adam", "adamw")
SCHEDULE_NAMES = ("cosine", "exponential", "inverse-sqrt", "inverse-time", "step")


class RunConfigError(ValueError):
    """A run's flag, folder, checkpoint or data refused before training, in one line."""


class FlagTextError(ValueError):
    """A flag's text that does not read as its type; the message is shown as it is."""


def positive_int(text):
    value = int(text)
    if value < 1:
        raise FlagTextError(f"expected a positive integer, got {text}")
    return value


def finite_float(text):
    """A float flag's type: nan and inf are refused here, so that no check after it
    (``not x >= 0``, ``x > 0``) can be passed by them."""
    try:
        value = float(text)
    except ValueError:
        raise FlagTextError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise FlagTextError(f"expected a finite number, got {text!r}")
    return value


def dev_size(text):
    """``--dev-size``: a count (``5000``, ``0`` for none) or a fraction of the training
    examples (``0.1``, Keras' ``validation_split``)."""
    try:
        return int(text)
    except ValueError:
        pass
    value = finite_float(text)
    if not 0 < value < 1:
        raise FlagTextError(f"expected a count (0 or more) or a fraction "
                            f"between 0 and 1, got {text!r}")
    return value


def _flag(default, parse=None, choices=None):
    """A run flag: its default, the function that reads its text (None: taken as
    typed) and the values it may take (None: any its text reads as)."""
    return field(default=default, metadata={"flag": True, "parse": parse, "choices": choices})


@dataclass
class RunConfig:
    """A training run: ``gpunet train``'s flags by their ``dest`` names and defaults.

    The first fields (up to ``device``) define the run and are what ``gpunet tune``
    may set; ``out`` is the run's folder, ``resume`` continues the run saved there
    (its flags restored from the checkpoint), ``overwrite`` replaces it (its files
    removed only once every check has passed). :meth:`check` refuses what cannot
    train, in one line naming each flag as typed.
    """

    model: str = _flag("lenet5", choices=tuple(sorted(MODELS)))
    batch_norm: bool = _flag(False)
    dataset: str = _flag("fashion-mnist", choices=DATASET_NAMES)
    data_root: str | None = _flag(None)
    epochs: int = _flag(5, positive_int)
    batch_size: int = _flag(128, positive_int)
    optimizer: str = _flag("adam", choices=OPTIMIZER_NAMES)
    lr: float = _flag(1e-3, finite_float)
    momentum: float = _flag(0.9, finite_float)
    weight_decay: float = _flag(0.0, finite_float)
    schedule: str | None = _flag(None, choices=SCHEDULE_NAMES)
    decay: float | None = _flag(None, finite_float)
    step_size: int = _flag(10, positive_int)
    warmup: int = _flag(0, int)
    clip_grad_norm: float | None = _flag(None, finite_float)
    flip: float = _flag(0.0, finite_float)
    dev_size: int | float = _flag(0.1, dev_size)
    limit: int | None = _flag(None, positive_int)
    seed: int = _flag(0, int)
    device: str | None = _flag(None)
    out: str = "runs/latest"
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    distributed: bool = False
    sync_batch_norm: bool = False

    def check(self) -> None:
        """Every flag that can be checked before any data is read: each value as its
        flag's text would read, then the flags that depend on each other."""
        problems = [f"{option(name)}: {problem}" for name in RUN_FLAGS
                    if (problem := flag_problem(name, getattr(self, name)))]
        if problems:
            raise RunConfigError("; ".join(problems))
        check_flags(self)

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


FLAGS = {f.name: f for f in dataclasses.fields(RunConfig) if f.metadata.get("flag")}
# The flags that define a training run (the ones gpunet tune's trials may set)
RUN_FLAGS = tuple(FLAGS)
# Flags a resumed run takes from its checkpoint: given again with another value,
# they would change the data split or the update rule mid-run.
SAVED_FLAGS = ("model", "batch_norm", "dataset", "optimizer", "lr", "momentum",
               "weight_decay", "schedule", "decay", "step_size", "batch_size", "limit",
               "dev_size", "flip", "seed", "sync_batch_norm", "warmup", "clip_grad_norm")
# Flags a resumed run also takes from its checkpoint, unless typed again: typed, they
# may differ (more epochs; the data moved), as neither changes the steps taken so far.
RESUME_FLAGS = ("epochs", "data_root")


def option(name: str) -> str:
    """The command-line option of field ``name``: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def run_defaults() -> dict:
    """The flags that define a training run and their defaults, as ``gpunet train``
    takes them (``dest`` names: ``batch_size``, ``lr`` ...)."""
    return {name: spec.default for name, spec in FLAGS.items()}


def flag_problem(name: str, value) -> str | None:
    """What is wrong with ``value`` for flag ``name`` as ``gpunet train`` takes it (its
    type, its choices), said after the flag ("takes sgd, adam; got 'lamb'"); None
    when it is fine."""
    spec = FLAGS[name]
    parse, choices = spec.metadata["parse"], spec.metadata["choices"]
    if value is None and spec.default is None:
        return None  # an optional flag left out (--schedule, --limit ...)
    if isinstance(spec.default, bool):
        return None if isinstance(value, bool) else \
            f"is on or off (true or false), got {value!r}"
    if choices is not None:
        return None if value in choices else f"takes {', '.join(choices)}; got {value!r}"
    if parse is None:  # --device, --data-root: opened or read as train does
        return None
    try:
        # a number given in Python, not its text: the checks below compare it as one
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(value)
        parse(str(value))
    except FlagTextError as exc:
        return str(exc)
    except ValueError:
        return f"expected {NUMBER_KINDS.get(parse, 'a whole number')}, got {value!r}"
    return None


# What a flag's reader takes, for a value of the wrong type given from Python (whole
# numbers by default)
NUMBER_KINDS = {float: "a number", finite_float: "a number",
                dev_size: "a count (0 or more) or a fraction between 0 and 1"}


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
assert set(DECAY_RULES) | {"cosine"} == set(SCHEDULE_NAMES)  # cosine takes no --decay


def check_flags(args) -> None:
    """The flags that can be checked before any data is read, alone and together,
    named as typed (``args``: a RunConfig, or anything with its fields)."""
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
    problems += _batch_norm_problems(args)
    if problems:
        raise RunConfigError("; ".join(problems))


def held_out(n: int, dev_size: int | float) -> int:
    """How many of ``n`` training images ``--dev-size`` holds out for validation: a
    count as it is, a fraction as Keras' validation_split (the small epsilon keeps
    0.1 * 30 at 3)."""
    return int(n * dev_size + 1e-9) if isinstance(dev_size, float) else dev_size


def _batch_norm_problems(args) -> list[str]:
    """Batch norm's training statistics need two examples in a batch: a batch size of
    1, or a ``--limit`` leaving fewer to train on, can never train."""
    if not getattr(args, "batch_norm", False):
        return []
    if args.batch_size == 1:
        return ["--batch-size 1: --batch-norm needs at least 2 examples per batch in "
                "training, for its variance"]
    if not args.limit or held_out(args.limit, args.dev_size) > args.limit // 2:
        return []  # no --limit: the data's size decides, checked once it is read
    # fewer images than --limit leave no more for training: n - held_out(n) never falls
    # as n grows
    train = args.limit - held_out(args.limit, args.dev_size)
    if train >= 2:
        return []
    enough = next(n for n in itertools.count(args.limit + 1)
                  if n - held_out(n, args.dev_size) >= 2)
    return [f"--limit {args.limit}: leaves {train} training image(s) after --dev-size "
            f"{args.dev_size}; --batch-norm needs at least 2, for its variance (give "
            f"--limit {enough} or more)"]


def train_command(flags: dict) -> str:
    """``gpunet train`` with the flags in ``flags`` that differ from train's defaults."""
    words = ["gpunet", "train"]
    for name, spec in FLAGS.items():
        value = flags.get(name, spec.default)
        if value == spec.default or value is None:
            continue
        if isinstance(value, bool):
            words.append(option(name))
        else:
            # repr: the shortest text that reads back as the same float, so that the
            # command trains exactly what the trial trained
            words += [option(name), repr(value) if isinstance(value, float) else str(value)]
    return " ".join(words)
