"""What the conv2d kernels would launch for each convolution of
``gpunet.benchmarks.LAYER_CASES`` at its GPU batch, without a GPU.

For every case and pass (forward, backward-data, backward-weight) one row of the
plan gpunet/cuda/conv2d.py launches (gpunet.cuda.conv2d_plan): kernel, tile, grid,
slices of a split reduction (split-K; summed in order by a second launch), blocks an
SM holds, waves on ``--sms`` SMs (132: an H100 SXM), how full the launched waves are,
and issued over useful multiply-adds. Nothing is timed; the figures
follow from the launch geometry alone.

A second table: per shipped model, the kernel launches of one training step by
family (conv, pool, batch norm, optimizer: zero_grad's one launch and Adam's one a
parameter), from the same plans (tests/test_launch_plans.py
checks them against the launches the CuPy test double records). ``--count-cupy``
also runs a LeNet-5 step through the double and counts the CuPy operations beside
our kernels, by the gpunet module asking for them.

    PYTHONPATH=. python bench/gpu_plan.py [--sms 132] [--dtype float32] [--tf32] [--markdown]
                                          [--count-cupy]
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import re
import subprocess
import sys
import warnings

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gpunet import models, nn  # noqa: E402
from gpunet._context import dilated_kernel, normalize_padding  # noqa: E402
from gpunet.benchmarks import LAYER_CASES  # noqa: E402
from gpunet.cuda import batchnorm, conv2d_plan, pool2d, runtime  # noqa: E402
from gpunet.cuda import optim as optim_kernels  # noqa: E402
from gpunet.cuda.runtime import BLOCK, Launch, ceil_div  # noqa: E402
from gpunet.nn.module import backward_params  # noqa: E402

PASSES = ("forward", "data", "weight")


def case_plans(case, dtype: str = "float32", tf32: bool = False, sms: int = 132):
    """``[(pass, Plan), ...]`` of one conv case at its GPU batch: the launches of
    every pass (a pass may launch more than one GEMM kernel)."""
    case = case.on_gpu()
    n, c, h, w = case.shape
    k, (r, s), (oh, ow) = case.args[1], case.kernel, case.out_hw
    stride = (case.stride, case.stride)
    pads = normalize_padding(case.padding, (r, s), stride)
    sizes = (n, c, h, w, k, r, s, oh, ow)
    return [("forward", conv2d_plan.forward_plan(sizes, stride, pads, dtype, tf32, sms)),
            ("data", conv2d_plan.data_plan(sizes, stride, pads, dtype, tf32, sms)),
            ("weight", conv2d_plan.weight_plan(sizes, stride, pads, dtype, tf32, sms))]


def rows(dtype="float32", tf32=False, sms=132):
    out = []
    for case in LAYER_CASES:
        if case.op != "conv":
            continue
        for name, plan in case_plans(case, dtype, tf32, sms):
            out.append((case.id, name, plan))
    return out


def format_table(table, markdown: bool = False) -> str:
    head = ["case", "pass", "kernel", "tile", "grid", "split", "blk/SM", "waves", "wave fill",
            "issued/useful"]
    lines = []
    for case, name, p in table:
        lines.append([case, name, p.kernel, f"{p.tile[0]}x{p.tile[1]}",
                      "x".join(str(g) for g in p.grid), str(p.split), str(p.blocks_per_sm),
                      f"{p.waves:.2f}", f"{p.wave_fill:.2f}", f"{p.overwork:.2f}"])
    return _format(head, lines, markdown)


def worst(table) -> str:
    """Per pass: the worst issued/useful; the worst wave fill of a launch with at
    least one wave of blocks; the worst of a pass with a wave of work (its blocks, or
    split-K slices of MIN_SLICE terms, fill the SMs; a grid under one wave counted
    by its share of one: conv2d_plan.fill_score)."""
    out = []
    for name in PASSES:
        plans = [p for _, n, p in table if n == name]
        full = [p for p in plans if p.waves >= 1]
        fill = min((p.wave_fill for p in full), default=float("nan"))
        work = min((conv2d_plan.fill_score(p.waves) for p in plans if p.a_wave_of_work),
                   default=float("nan"))
        out.append(f"{name}: worst issued/useful {max(p.overwork for p in plans):.2f}, "
                   f"worst wave fill (>= 1 wave) {fill:.2f}, (a wave of work) {work:.2f}, "
                   f"fewest waves {min(p.waves for p in plans):.2f}")
    scored = sorted((conv2d_plan.fill_score(p.waves), case, name) for case, name, p in table)
    short = [f"{case} {name} {score:.2f}" for score, case, name in scored
             if score < conv2d_plan.GOOD_FILL]
    out.append(f"every pass: worst fill {scored[0][0]:.2f} ({scored[0][1]} {scored[0][2]}; "
               f"under one wave counted by its share of one); under "
               f"{conv2d_plan.GOOD_FILL}: {', '.join(short) or 'none'}")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sms", type=int, default=132)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--tf32", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--count-cupy", action="store_true",
                        help="also run one training step of the LeNet-5 models through the "
                             "CuPy test double and count its kernel launches and CuPy "
                             "operations")
    args = parser.parse_args(argv)
    if args.count_cupy and os.environ.get("GPUNET_CUPY_DOUBLE") != "1":
        # the double must be `cupy` before gpunet imports it: in a fresh process
        double = os.path.join(ROOT, "tests", "cupy_double")
        env = dict(os.environ, GPUNET_CUPY_DOUBLE="1", PYTHONPATH=os.pathsep.join(
            [double, ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]))
        argv = sys.argv[1:] if argv is None else list(argv)
        return subprocess.run([sys.executable, os.path.abspath(__file__), *argv],
                              env=env).returncode
    table = rows(args.dtype, args.tf32, args.sms)
    print(format_table(table, args.markdown))
    print()
    print(worst(table))
    print()
    print("Kernel launches of one training step (zero_grad, forward, loss, backward,\n"
          "Adam's step), from the launchers' plans; CuPy operations (linear layers,\n"
          "activations, loss, gradient sums) come on top: --count-cupy counts them in the\n"
          "CuPy test double")
    print(step_table(args.markdown, args.sms))
    if args.count_cupy:
        print()
        print(cupy_table(args.markdown))
    return 0


# -- launches per training step of each shipped model (issue 26, deliverable 6) ---------
# The models at their input sizes; the batch only sizes the grids (a launch count does not
# depend on it). Each row: the kernel launches of one training step (zero_grad, forward,
# loss, backward without the first layer's input gradient, Adam's step) by family, from
# the launchers' own plans (gpunet.cuda.conv2d_plan, batchnorm.*_plan, pool2d.*_plan,
# optim.zero_plan and step_plan).
STEP_MODELS = [  # (name, make the model, input (C, H, W), batch)
    ("lenet5", models.lenet5, (1, 28, 28), 64),
    ("lenet5 batch norm", functools.partial(models.lenet5, batch_norm=True), (1, 28, 28), 64),
    ("lenet5_notes", models.lenet5_notes, (3, 32, 32), 64),
    ("alexnet_cifar", models.alexnet_cifar, (3, 32, 32), 64),
    ("alexnet", models.alexnet, (3, 224, 224), 16),
    ("vgg_cifar", models.vgg_cifar, (3, 32, 32), 64),
    ("vgg16", models.vgg16, (3, 224, 224), 4),
    ("resnet18_cifar", models.resnet18_cifar, (3, 32, 32), 64),
]
FAMILIES = ("conv", "pool", "batch norm", "optimizer")


def traced_layers(model, input_shape):
    """``[(layer, x shape, y shape, input_grad), ...]`` of every layer without
    submodules, in the order their forward runs; ``input_grad`` as the training
    step's backward asks it (``False`` for the first layer, whose input is the data).
    One empty batch through the model on the CPU (evaluation mode: training refuses
    batch norm on fewer than two values a channel), forward and backward: only the
    shapes and the calls matter. ``model`` on the CPU, float32."""
    calls, backward_of = [], {}
    leaves = [m for _, m in model.named_modules() if not list(m.children())]

    def traced(module):
        forward, backward = module.forward, module.backward

        def forward_and_record(x):
            y = forward(x)
            calls.append([module, tuple(x.shape), tuple(y.shape), None])
            return y

        def backward_and_record(dy, input_grad=True):
            backward_of[id(module)] = input_grad
            return backward(dy, input_grad) if input_grad is not True else backward(dy)
        return forward_and_record, backward_and_record

    was_training = model.training
    model.eval()
    try:
        for module in leaves:  # instance attributes shadow the class's methods
            module.forward, module.backward = traced(module)
        y = model.forward(numpy.zeros((0, *input_shape), numpy.float32))
        backward_params(model, numpy.zeros_like(y))
    finally:
        for module in leaves:
            module.__dict__.pop("forward", None)
            module.__dict__.pop("backward", None)
            module.__dict__.pop("_ctx", None)
        model.train(was_training)
    for call in calls:
        call[3] = backward_of[id(call[0])]
    return [tuple(call) for call in calls]


def conv_launches(sizes, stride, pads, has_bias: bool, input_grad: bool, dtype="float32",
                  tf32: bool = False, sms: int = 132, dilation=(1, 1)):
    """``(forward, backward)`` lists of runtime.Launch of one convolution of ``sizes``
    ``(N, C, H, W, K, R, S, OH, OW)`` (gpunet/cuda/conv2d.py): the planned GEMM or
    direct kernel of each pass, a split forward's slices summed by ``conv2d_fwd_reduce``,
    the backward's by ``conv2d_bwd_weight_reduce``, and with a bias ``conv2d_bwd_bias``
    and its sum."""
    n, c, h, w, k, r, s, oh, ow = sizes
    itemsize = numpy.dtype(dtype).itemsize

    def launch(plan):
        direct = plan.kernel.endswith("_direct")
        return Launch(plan.kernel, plan.grid, (plan.tile[1], 1, 1) if direct else (256, 1, 1))

    plan = conv2d_plan.forward_plan(sizes, stride, pads, dtype, tf32, sms, dilation)
    forward = [launch(plan)]
    if plan.split > 1:  # the slices' partial sums added in order, with the bias
        forward.append(Launch("conv2d_fwd_reduce", (ceil_div(n * k * oh * ow, BLOCK), 1, 1),
                              (BLOCK, 1, 1)))
    backward = []
    if input_grad and c:
        plan = conv2d_plan.data_plan(sizes, stride, pads, dtype, tf32, sms, dilation)
        backward.append(launch(plan))
        if plan.split > 1:
            backward.append(Launch("conv2d_bwd_weight_reduce",
                                   (ceil_div(n * c * h * w, BLOCK), 1, 1), (BLOCK, 1, 1)))
    if c:
        weight = conv2d_plan.weight_plan(sizes, stride, pads, dtype, tf32, sms, dilation)
        crs = c * (dilation[0] * (r - 1) + 1) * (dilation[1] * (s - 1) + 1)
        backward += [launch(weight), Launch("conv2d_bwd_weight_reduce",
                                            (ceil_div(k * crs, BLOCK), 1, 1), (BLOCK, 1, 1))]
    if has_bias:
        parts, _ = runtime.runs(n * oh * ow, k, conv2d_plan.TARGET_BLOCKS, 1024)
        backward += [Launch("conv2d_bwd_bias", (parts, k, 1), (BLOCK, 1, 1), BLOCK * itemsize),
                     Launch("conv2d_bwd_weight_reduce", (ceil_div(k, BLOCK), 1, 1),
                            (BLOCK, 1, 1))]
    return forward, backward


def layer_launches(layer, x_shape, y_shape, input_grad, batch: int, dtype="float32",
                   sms: int = 132):
    """``(family, forward, backward)``: the runtime.Launch lists of one layer of a
    training step at ``batch`` (``family`` None: no kernel of ours, CuPy operations
    alone)."""
    x_shape, y_shape = (batch, *x_shape[1:]), (batch, *y_shape[1:])
    if isinstance(layer, nn.Conv2d):
        groups = layer.groups
        (n, c, h, w), (k, r, s) = x_shape, (layer.out_channels, *layer.kernel_size)
        window = dilated_kernel((r, s), layer.dilation)
        pads = normalize_padding(layer.padding_for(numpy.empty((0, *x_shape[1:]))), window,
                                 layer.stride)
        sizes = (n, c // groups, h, w, k // groups, r, s, *y_shape[2:])
        forward, backward = conv_launches(sizes, layer.stride, pads, layer.bias is not None,
                                          input_grad, dtype, False, sms, layer.dilation)
        return "conv", forward * groups, backward * groups
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        kind = "max" if isinstance(layer, nn.MaxPool2d) else "avg"
        return ("pool", pool2d.forward_plan(kind, x_shape, y_shape[2:]),
                pool2d.backward_plan(kind, x_shape))
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return ("batch norm", batchnorm.train_forward_plan(x_shape, dtype),
                batchnorm.backward_plan(x_shape, dtype, input_grad))
    return None, [], []


def step_launches(model, input_shape, batch: int, dtype="float32", sms: int = 132):
    """``[(family, forward, backward), ...]`` per layer of one training step."""
    return [layer_launches(layer, x_shape, y_shape, input_grad, batch, dtype, sms)
            for layer, x_shape, y_shape, input_grad in traced_layers(model, input_shape)]


def zero_grad_launches(model) -> list:
    """The runtime.Launch list of the optimizer's ``zero_grad`` of ``model``'s
    parameters, which opens a training step (gpunet/cuda/optim.py: one ``zero_arrays``
    for every gradient of a dtype)."""
    sizes = [p.data.size for p in model.parameters() if p.data.size]
    return optim_kernels.zero_plan(sizes) if sizes else []


def optimizer_launches(model) -> list:
    """The runtime.Launch list of one Adam step of ``model``'s parameters
    (gpunet/cuda/optim.py: one ``adam_step`` a parameter, in parameter order)."""
    return [launch for p in model.parameters()
            for launch in optim_kernels.step_plan("adam_step", p.data.size)]


def step_counts(model, input_shape, batch: int, dtype="float32", sms: int = 132) -> dict:
    """Kernel launches of one training step (Adam's), per family and in all
    (``"ours"``)."""
    counts = dict.fromkeys(FAMILIES, 0)
    for family, forward, backward in step_launches(model, input_shape, batch, dtype, sms):
        if family is not None:
            counts[family] += len(forward) + len(backward)
    counts["optimizer"] = len(zero_grad_launches(model)) + len(optimizer_launches(model))
    counts["ours"] = sum(counts[f] for f in FAMILIES)
    return counts


def step_table(markdown: bool = False, sms: int = 132) -> str:
    head = ["model", "input", "batch", *FAMILIES, "our launches"]
    lines = []
    for name, make, shape, batch in STEP_MODELS:
        with warnings.catch_warnings():  # "using the CPU": the layers are made on the CPU
            warnings.simplefilter("ignore")
            model = make().to("cpu")
        counts = step_counts(model, shape, batch, sms=sms)
        lines.append([name, "x".join(map(str, shape)), str(batch),
                      *(str(counts[f]) for f in FAMILIES), str(counts["ours"])])
    return _format(head, lines, markdown)


def _format(head, lines, markdown: bool) -> str:
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                          ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    return "\n".join("  ".join(x[i].ljust(widths[i]) for i in range(len(head)))
                      for x in [head] + lines)


IN_PLACE = re.compile(r"__i(add|sub|mul|truediv|floordiv|mod|pow|and|or|xor|lshift|rshift"
                      r"|matmul)__")


GPUNET = os.path.join(ROOT, "gpunet") + os.sep
NOT_AN_ORIGIN = ("backend.py", os.path.join("cuda", "runtime.py"))


def _origin() -> str:
    """The innermost gpunet module on the stack but the backend and the launch runtime
    (``optim.optimizers``, ``train``, ``ops.linear``, ...)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(GPUNET) and not name.endswith(NOT_AN_ORIGIN):
            return name[len(GPUNET):-len(".py")].replace(os.sep, ".")
        frame = frame.f_back
    return "elsewhere"


OPTIMIZER_KERNELS = ("adam_step", "sgd_step", "momentum_step", "rmsprop_step", "zero_arrays")


def _family(kernel: str) -> str:
    return "conv" if kernel.startswith("conv2d") else \
        "pool" if "pool2d" in kernel else "batch norm" if kernel.startswith("bn_") else \
        "optimizer" if kernel in OPTIMIZER_KERNELS else kernel


def count_step_work(make, input_shape, batch: int = 2, num_classes: int = 10, seed: int = 0):
    """The work one training step (Adam, softmax cross-entropy, ``gpunet.train_step``)
    puts on the GPU, counted in the CuPy test double (tests/cupy_double imported as
    ``cupy``; the kernels run in its emulator, so keep ``batch`` small): ``{"launched":
    [(kernel, grid, block, shared_mem), ...], "kernels": launches per family, "cupy
    ops": CuPy operations that compute or copy (elementwise, reductions, matmul,
    astype, fill, in-place operators; allocation, views and copies to the host are
    free), "ops": their names, "origins": the gpunet module that asked for each}``.
    The second of two steps: the first copies the per-shape tables once and
    creates the optimizer's state."""
    import cupy
    if not getattr(cupy, "IS_TEST_DOUBLE", False):
        raise RuntimeError("count_step_work counts in the CuPy test double: put "
                           "tests/cupy_double first on the path and set GPUNET_CUPY_DOUBLE=1")
    from cupy import _core, _raw

    import gpunet
    from gpunet.losses import SoftmaxCrossEntropy
    from gpunet.optim import Adam
    from gpunet.train import train_step

    gpunet.manual_seed(seed)
    model = make().to("cuda", dtype="float32")
    rng = numpy.random.default_rng(seed)
    xb = cupy.asarray(rng.standard_normal((batch, *input_shape)).astype(numpy.float32))
    yb = cupy.asarray(rng.integers(0, num_classes, batch))
    loss, optimizer = SoftmaxCrossEntropy(), Adam(model.parameters())
    train_step(model, loss, optimizer, xb, yb)

    ops, compute = [], _core.compute

    def counted_compute(function, *args, **kwargs):
        result = compute(function, *args, **kwargs)
        name = getattr(function, "__name__", repr(function))
        # a method (``a.reshape``) holds its array as __self__
        inputs = [a for a in (*args, getattr(function, "__self__", None))
                  if isinstance(a, numpy.ndarray)]
        produced = result._a if isinstance(result, _core.ndarray) else None
        view = produced is not None and any(numpy.may_share_memory(produced, a) for a in inputs)
        if name not in ("empty", "empty_like") and ("out" in kwargs or not view):
            ops.append((name, _origin()))
        return result

    def counted(name, method):
        def wrapper(self, *args, **kwargs):
            ops.append((name, _origin()))
            return method(self, *args, **kwargs)
        return wrapper

    methods = {name: method for name, method in vars(_core.ndarray).items()
               if IN_PLACE.fullmatch(name) or name in ("__neg__", "__abs__", "__setitem__",
                                                        "astype", "copy", "fill")}
    start = len(_raw.launches)
    _core.compute = counted_compute
    for name, method in methods.items():
        setattr(_core.ndarray, name, counted(name, method))
    try:
        train_step(model, loss, optimizer, xb, yb)
    finally:
        _core.compute = compute
        for name, method in methods.items():
            setattr(_core.ndarray, name, method)
    launched = [tuple(launch) for launch in _raw.launches[start:]]
    kernels = dict.fromkeys(FAMILIES, 0)
    for kernel, *_ in launched:
        kernels[_family(kernel)] = kernels.get(_family(kernel), 0) + 1
    return {"launched": launched, "kernels": kernels, "cupy ops": len(ops),
            "ops": [name for name, _ in ops], "origins": [where for _, where in ops]}


COUNTED_MODELS = ("lenet5", "lenet5 batch norm")  # emulated kernels: small models only


def cupy_table(markdown: bool = False) -> str:
    """One training step of each of COUNTED_MODELS at batch 2 through the CuPy test
    double: our kernel launches as the double records them, and CuPy operations."""
    head = ["model", *FAMILIES, "our launches", "CuPy operations", "all",
            "CuPy operations by the module asking"]
    lines = []
    for name, make, shape, _ in STEP_MODELS:
        if name not in COUNTED_MODELS:
            continue
        work = count_step_work(make, shape)
        ours = len(work["launched"])
        origins = collections.Counter(work["origins"]).most_common()
        lines.append([name, *(str(work["kernels"][f]) for f in FAMILIES), str(ours),
                      str(work["cupy ops"]), str(ours + work["cupy ops"]),
                      ", ".join(f"{where} {count}" for where, count in origins)])
    return _format(head, lines, markdown)


if __name__ == "__main__":
    sys.exit(main())
