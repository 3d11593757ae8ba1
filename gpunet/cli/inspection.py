"""``gpunet evaluate``, ``summary``, ``gradcheck``, ``bench`` and ``info``: commands
that look at a checkpoint, a model, the kernels or the machine."""
from __future__ import annotations

import os
import platform
import sys

import numpy

from .. import __version__, backend, config
from ..data.transforms import Standardize
from ..io import load, read_checkpoint
from ..losses import SoftmaxCrossEntropy
from ..models import MODELS, summary
from ..recipe.building import (
    DATASETS,
    IMAGE_SHAPES,
    INPUT_SHAPES,
    build_model,
    check_model_input,
    datasets_of,
    load_dataset,
    prepare,
)
from ..recipe.device import use_device
from ..recipe.files import check_writable
from ..train import evaluate
from .parser import UsageError


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
    use_device(args.device)
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
    model = build_model(meta["architecture"], in_channels, meta.get("batch_norm", False))
    trained_on = meta.get("dataset")
    if trained_on in IMAGE_SHAPES:  # the images the run took, not the model's textbook ones
        who, takes = f"{meta['architecture']} trained on {trained_on}", IMAGE_SHAPES[trained_on]
    else:
        who, takes = meta["architecture"], args.memory_model[3]
    check_model_input(f"{args.checkpoint} holds a {who}, which", takes, model, dataset,
                      datasets_of(takes))
    load(args.checkpoint, model, restore_rng=False)
    args.phase = "loading the data"
    x_test, y_test = load_dataset(dataset, args.data_root, split="test")  # no training files
    args.memory_model = (*args.memory_model[:3], x_test.shape[1:])
    std = meta.get("standardize") or {"mean": [0.0], "std": [1.0]}
    stats = Standardize(numpy.asarray(std["mean"]), numpy.asarray(std["std"]))
    args.batch_size = args.batch_size or meta.get("flags", {}).get("batch_size") or 256
    args.phase = f"evaluating the {dataset} test set"
    scores = evaluate(model, (prepare(x_test, stats), y_test), batch_size=args.batch_size)
    print(f"loss {scores['loss']:.4f}  accuracy {scores['accuracy']:.4f}  "
          f"({len(x_test):,} {dataset} test images)")
    return 0


def cmd_summary(args) -> int:
    backend.set_device("cpu")
    shape = args.input_shape or INPUT_SHAPES[args.model]
    try:
        summary(build_model(args.model, shape[0], args.batch_norm), shape,
                batch_size=args.batch_size)
    except ValueError as exc:  # summary names its argument; the user typed the flag
        if args.input_shape and str(exc).startswith("input_shape:"):
            raise UsageError(f"--input-shape {','.join(map(str, shape))}: "
                             f"{str(exc).removeprefix('input_shape:').strip()}") from None
        raise
    return 0


def cmd_gradcheck(args) -> int:
    from ..gradcheck import gradcheck
    use_device(args.device)
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


def cmd_bench(args) -> int:
    from .. import benchmarks
    use_device(args.device)  # the one rule: --device, else $GPUNET_DEVICE, else auto
    args.device = backend.get_device().name
    cases = [c for c in benchmarks.CASES if (not args.net or c.net in args.net)
             and (not args.op or c.op in args.op)]
    if not cases:
        raise UsageError(f"no benchmark case matches --net {args.net} --op {args.op}")
    check_writable("--out", args.out)  # before the timings, which the report would lose
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
    from ..cuda import kernel_dir, kernels_enabled
    cache = os.environ.get("CUPY_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cupy",
                                                              "kernel_cache")
    print(f"kernels: {'on' if kernels_enabled() else 'off (GPUNET_KERNELS=0)'}, sources "
          f"{kernel_dir()}, compiled by CuPy into {cache}")
    # what train, evaluate and tune would run on, refused as they refuse it
    use_device(None, quiet=True)
    spec = f"GPUNET_DEVICE={config.get('device')}" if config.is_set("device") else \
        "auto: GPUNET_DEVICE is not set"
    print(f"device: {backend.get_device().name} ({spec})")
    return 0
