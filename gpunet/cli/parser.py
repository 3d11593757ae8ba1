"""``gpunet``'s argument parser: every command's flags; ``train`` and ``tune`` take the
run flags of :class:`gpunet.recipe.RunConfig`, with its defaults and choices."""
from __future__ import annotations

import argparse
import os

from .. import __version__
from ..models import MODELS
from ..recipe.building import DATASETS
from ..recipe.run_config import FLAGS, FlagTextError, RunConfig, finite_float, positive_int


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


def flag_type(parse):
    """The library's reader of a flag's text as argparse's ``type``: its one-line
    reason (a FlagTextError) shown as it is."""
    if parse in (None, int):
        return parse

    def read(text):
        try:
            return parse(text)
        except FlagTextError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    read.__name__ = parse.__name__
    return read


def _shape(text):
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive sizes C,H,W, got {text!r}")
    return shape


DEVICE_HELP = "cpu, cuda, cuda:N or auto (default: $GPUNET_DEVICE, else auto)"
# The run flags' help; their defaults, types and choices are RunConfig's.
RUN_HELP = {
    "batch_norm": "LeNet-5 with batch norm after each conv and hidden FC layer",
    "data_root": "folder holding the dataset files",
    "optimizer": "adamw: Adam with --weight-decay decoupled (AdamW)",
    "momentum": "momentum of sgd, beta of momentum and rmsprop",
    "weight_decay": "L2 on the weights (adamw: decoupled decay)",
    "schedule": "learning-rate decay per epoch (needs --decay), or cosine: per step to 0 at "
                "the end of the run, after --warmup steps",
    "decay": "the schedule's decay_rate (inverse-time: > 0), k (inverse-sqrt: in (0, 1]) or "
             "factor (exponential, step: between 0 and 1)",
    "step_size": "epochs between the step schedule's decays",
    "warmup": "with --schedule cosine: raise the rate linearly to --lr over the first N steps",
    "clip_grad_norm": "scale each step's gradients to a total 2-norm of at most X",
    "flip": "augment: flip each training image left-right with probability P",
    "dev_size": "training examples held out for validation: a fraction (default 0.1) or a "
                "count (0: none); at most half of them",
    "limit": "use only this many training examples",
    "device": DEVICE_HELP}
RUN_METAVARS = {"warmup": "N", "clip_grad_norm": "X", "flip": "P"}


def add_run_arguments(p) -> None:
    """The flags that define a training run, shared by ``train`` and ``tune``."""
    for name, spec in FLAGS.items():
        option, help_text = "--" + name.replace("_", "-"), RUN_HELP.get(name)
        if isinstance(spec.default, bool):
            p.add_argument(option, action="store_true", help=help_text)
            continue
        choices = spec.metadata["choices"]
        p.add_argument(option, type=flag_type(spec.metadata["parse"]), default=spec.default,
                       choices=list(choices) if choices else None, help=help_text,
                       **({"metavar": RUN_METAVARS[name]} if name in RUN_METAVARS else {}))


def _add_train_parser(sub):
    train = sub.add_parser("train", help="train a model and report its test accuracy",
                           allow_abbrev=False)  # exact flags: --resume compares them
    add_run_arguments(train)
    train.add_argument("--out", default=RunConfig.out,
                       help="folder for metrics and checkpoints")
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
    return train


def _add_tune_parser(sub):
    tune = sub.add_parser("tune", allow_abbrev=False,
                          help="random search over training hyperparameters (Optuna): "
                               "trials in parallel, pruning, --resume, coarse to fine")
    add_run_arguments(tune)
    tune.add_argument("--param", action="append", default=[], metavar="NAME=KIND:LOW:HIGH",
                      help="a hyperparameter to search, e.g. lr=log:1e-4:1, momentum=beta:0.9:"
                           "0.999, batch_size=pow2:32:256, optimizer=choice:sgd,adam "
                           "(KIND: log, beta, uniform, int, pow2, choice); repeatable")
    tune.add_argument("--space", metavar="FILE",
                      help='a JSON or YAML mapping of NAME: SPEC, e.g. {"lr": "log:1e-4:1"}')
    tune.add_argument("--trials", type=flag_type(positive_int), default=12,
                      help="trials in all (with --refine: in the new round)")
    tune.add_argument("--workers", type=flag_type(positive_int), default=1,
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
    return tune


def _add_inspection_parsers(sub):
    ev = sub.add_parser("evaluate", help="loss and accuracy of a checkpoint on a test set")
    ev.add_argument("checkpoint", help="a checkpoint, or a run's --out folder (its best.npz)")
    ev.add_argument("--dataset", choices=sorted(DATASETS))
    ev.add_argument("--data-root")
    ev.add_argument("--batch-size", type=flag_type(positive_int),
                    help="images per forward pass (default: the run's training batch size, "
                         "else 256)")
    ev.add_argument("--device", help=DEVICE_HELP)

    sm = sub.add_parser("summary", help="print a model's layers, shapes and parameters")
    sm.add_argument("model", choices=sorted(MODELS))
    sm.add_argument("--input-shape", type=_shape, help="C,H,W (default: the model's own)")
    sm.add_argument("--batch-norm", action="store_true",
                    help="LeNet-5 with batch norm, as train --batch-norm builds it")
    sm.add_argument("--batch-size", type=flag_type(positive_int), default=1,
                    help="images for the mult-add and memory totals")

    gc = sub.add_parser("gradcheck", help="check a model's backward by centred differences")
    gc.add_argument("model", choices=sorted(MODELS))
    gc.add_argument("--input-shape", type=_shape)
    gc.add_argument("--batch-size", type=flag_type(positive_int), default=2)
    gc.add_argument("--max-per-param", type=flag_type(positive_int), default=5)
    # 1e-6 rather than the library's 1e-7: float64 rounding of the cost, ~1e-16 |J| / eps,
    # is then below 1e-7 of even small gradients, and the O(eps^2) error still negligible.
    gc.add_argument("--eps", type=flag_type(finite_float), default=1e-6)
    gc.add_argument("--seed", type=int, default=0)
    gc.add_argument("--device", help=DEVICE_HELP)


def _add_bench_parser(sub):
    from ..benchmarks import CASES
    bn = sub.add_parser("bench", help="time layers and training steps beside PyTorch; "
                        "save the table as JSON")
    bn.add_argument("--net", action="append", choices=sorted({c.net for c in CASES}),
                    help="only these nets' cases (repeatable; default: all)")
    bn.add_argument("--op", action="append", choices=["conv", "maxpool", "batchnorm", "step"],
                    help="only these ops (repeatable; default: all)")
    bn.add_argument("--device", help=DEVICE_HELP)
    bn.add_argument("--rounds", type=flag_type(positive_int), default=5,
                    help="turns each library takes; the median is reported")
    bn.add_argument("--no-torch", action="store_true", help="time gpunet only")
    bn.add_argument("--memory", action="store_true",
                    help="also compare peak memory: a LeNet-5 epoch, an AlexNet-CIFAR step "
                         "(resident memory on the CPU, device memory on a GPU)")
    bn.add_argument("--images", type=flag_type(positive_int), default=60000,
                    help="images in the LeNet-5 epoch of --memory")
    bn.add_argument("--out", default=os.path.join("bench", "results"),
                    help="folder for the JSON report")


def build_parser() -> Parser:
    parser = Parser(prog="gpunet", description="Train and inspect CNNs with gpunet.",
                    allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"gpunet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    parser.train_parser = _add_train_parser(sub)
    parser.tune_parser = _add_tune_parser(sub)
    _add_inspection_parsers(sub)
    _add_bench_parser(sub)
    sub.add_parser("info", help="backend, versions, device")
    return parser


def given_flags(subparser, argv) -> set[str]:
    """The ``dest`` of every flag of ``subparser`` typed on the command line."""
    given = set()
    for action in subparser._actions:
        for option in action.option_strings:
            if any(token == option or token.startswith(option + "=") for token in argv):
                given.add(action.dest)
    return given
