"""What a run is made of, built from its flags: the dataset, the model, the
optimizer and the learning-rate schedule."""
from __future__ import annotations

from ..data import load_cifar10, load_fashion_mnist, load_mnist, synthetic_images
from ..data.transforms import Standardize, to_float
from ..models import MODELS, summary
from ..optim import SGD, Adam, AdamW, Momentum, RMSProp, decay_groups, schedules
from .run_config import DATASET_NAMES, OPTIMIZER_NAMES, SCHEDULE_NAMES, RunConfigError

DATASETS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10,
            "synthetic": lambda split=None: synthetic_images(split=split)}
# Each dataset's image shape (C, H, W), known from its name: a model that cannot take
# it is refused before any file is read.
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32),
                "synthetic": (3, 32, 32)}
INPUT_SHAPES = {"lenet5": (1, 32, 32), "lenet5_notes": (3, 32, 32), "alexnet": (3, 224, 224),
                "vgg16": (3, 224, 224), "alexnet_cifar": (3, 32, 32), "vgg_cifar": (3, 32, 32),
                "resnet18_cifar": (3, 32, 32)}
SCHEDULES = {"inverse-time": lambda o, a, steps: schedules.InverseTimeDecay(o, a.decay),
             "exponential": lambda o, a, steps: schedules.ExponentialDecay(o, a.decay),
             "inverse-sqrt": lambda o, a, steps: schedules.InverseSqrtDecay(o, a.decay),
             "step": lambda o, a, steps: schedules.StepDecay(o, a.step_size, a.decay),
             # per optimizer step, over the run's steps (known once the data is loaded)
             "cosine": lambda o, a, steps: schedules.CosineDecay(o, steps, a.warmup,
                                                                 per_step=True)}
OPTIMIZERS = {
    "sgd": lambda p, a: SGD(p, a.lr, momentum=a.momentum, weight_decay=a.weight_decay),
    "momentum": lambda p, a: Momentum(p, a.lr, beta=a.momentum, weight_decay=a.weight_decay),
    "rmsprop": lambda p, a: RMSProp(p, a.lr, beta=a.momentum, weight_decay=a.weight_decay),
    "adam": lambda p, a: Adam(p, a.lr, weight_decay=a.weight_decay),
    "adamw": lambda p, a: AdamW(p, a.lr, weight_decay=a.weight_decay)}
# the names RunConfig offers are the ones built here
assert (set(DATASETS), set(SCHEDULES), tuple(OPTIMIZERS)) == \
    (set(DATASET_NAMES), set(SCHEDULE_NAMES), OPTIMIZER_NAMES)


def load_dataset(name, root, split=None):
    """Both splits of ``name``, or (``split``) the one needed, its files alone read."""
    loader = DATASETS[name]
    return loader(root, split=split) if root is not None and name != "synthetic" else \
        loader(split=split)


def _shape_text(shape) -> str:
    return "x".join(map(str, shape))


def check_model_input(who, takes, model, dataset, instead) -> None:
    """The model can take the dataset's images, found before any data is read (the
    shape is known from the dataset's name) by one zero image through it; the
    error says what the model takes (``takes``, (C, H, W)), what the dataset holds,
    and ``instead``, what would fit."""
    shape = IMAGE_SHAPES[dataset]
    try:
        summary(model, shape, print_table=False)
    except (ValueError, TypeError) as exc:
        raise RunConfigError(f"{who} takes {_shape_text(takes)} images (C x H x W), but "
                             f"{dataset} has {_shape_text(shape)} ones ({exc}); "
                             f"{instead}") from None


def models_for(dataset) -> str:
    """What ``gpunet train`` could train on ``dataset`` instead: lenet5 (built for any
    number of channels) and the models made for its image size."""
    shape = IMAGE_SHAPES[dataset]
    fits = [m for m in sorted(MODELS) if m == "lenet5" or INPUT_SHAPES[m] == shape]
    return f"models for them: {', '.join(fits)}"


def datasets_of(shape) -> str:
    """The datasets a model trained on ``shape`` images (C, H, W) can be evaluated on."""
    names = [d for d in DATASET_NAMES if IMAGE_SHAPES[d] == tuple(shape)]
    return (f"datasets of {_shape_text(shape)} images: {', '.join(names)}" if names
            else f"no dataset here has {_shape_text(shape)} images")


def prepare(x, stats: Standardize):
    return stats(to_float(x))


def build_model(name, in_channels, batch_norm):
    if name == "lenet5":
        return MODELS[name](in_channels=in_channels, batch_norm=batch_norm)
    if batch_norm:
        raise RunConfigError(f"--batch-norm applies to lenet5 only, not {name}")
    return MODELS[name]()


def build_optimizer(args, params):
    """The optimizer of ``args.optimizer`` over ``params``, ``--weight-decay`` on the
    weights only (biases and batch-norm vectors in a group at 0)."""
    if args.optimizer not in OPTIMIZERS:  # never a default: a name train does not know
        raise RunConfigError(f"--optimizer: expected one of {', '.join(OPTIMIZERS)}, got "
                             f"{args.optimizer!r}")
    if args.weight_decay:
        params = decay_groups(params, args.weight_decay)
    return OPTIMIZERS[args.optimizer](params, args)


def build_schedule(args, optimizer, total_steps: int):
    """``args.schedule`` over ``optimizer`` (None without one); ``total_steps``, the
    optimizer steps of the whole run, is the cosine schedule's length."""
    return SCHEDULES[args.schedule](optimizer, args, total_steps) if args.schedule else None
