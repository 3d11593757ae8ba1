"""The timings stage: every kernel path the launchers can choose, timed beside the
xp path on CuPy and cuDNN (PyTorch on CUDA), forward and backward, on the shapes
of ``gpunet.benchmarks.LAYER_CASES`` at their GPU batches, and extra conv cases
(net ``extra``) for the paths those leave out on this GPU's SM count; one optimizer
step over LeNet-5's and AlexNet-CIFAR's parameters (kernels/optim.cu) beside the xp
path and ``torch.optim``; then ``gpunet bench --device cuda --op step``.

Which path a launcher takes follows from the shape (gpunet.cuda.conv2d_plan): the
direct kernels for few channels or filters, the wide (64-row) or 128 x 128 GEMMs,
split-K for the weight gradient. Every convolution is timed in float32 and, where
allowing TF32 changes the kernels its plan picks, again with TF32 allowed (the
tensor-core GEMMs); every pooling case as max and as average pooling; batch norm
in training. Each row records the kernels its pass
launched and, for a convolution, what the plan chose (kernel, tile, grid, split-K
slices), so a GPU run's report says which path each time belongs to; a kernel of
``kernels/*.cu`` that no row launched fails the stage. The dry run times the
awkward cases instead (gpunet.benchmarks.awkward), which the emulator can run, and
the optimizer steps of LeNet-5 alone.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import types

import numpy

from .common import (
    ROOT,
    StageContext,
    bench_script,
    file_kernels,
    kernel_names,
    recorded_launches,
    run_bounded,
)

TILE_K_CHOICES = (8, 16)  # 32 would overflow 48 KiB of static shared memory
TILE_K_CASES = ("alexnet_cifar/conv2", "vgg16/conv3_2")  # GEMM paths (TILE_K is theirs)
POOL_OPS = ("maxpool", "avgpool")


# Shapes that take the conv paths the layer cases may leave out on some SM count (a
# split forward needs a grid under a wave, and what is under a wave depends on the SMs),
# tried in this order, each at EXTRA_BATCHES in turn: (C, H = W, K, filter, padding)
EXTRA_CONV_SHAPES = ((256, 14, 64, 3, 1),   # long sums: split forwards, wide and 128 x 128
                     (256, 14, 128, 3, 1),
                     (24, 28, 64, 3, 1),    # C R S = 216 under MIN_SLICE: never split
                     (24, 28, 128, 3, 1),
                     (8, 28, 8, 3, 1))      # few channels and filters: the direct kernels
EXTRA_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)
# Launched by every backward whatever its plan (the bias gradient and its sum): no plan
# names them, and every conv row times them
EVERY_BACKWARD = ("conv2d_bwd_bias", "conv2d_bwd_weight_reduce")


def timing_cases(dry: bool, sms: int = 0, tensor_cores: bool = True) -> list:
    """What the stage times: the layer cases at their GPU batches, each pooling case
    also as average pooling, and the extra conv cases that make the plans on ``sms``
    SMs pick every conv kernel (:func:`extra_conv_cases`); for the dry run, the
    awkward cases (the double runs the kernels in an emulator)."""
    from gpunet.benchmarks import LAYER_CASES, awkward
    if dry:
        return list(awkward.AWKWARD_LAYER_CASES)
    if sms < 1:
        raise ValueError(f"timing_cases: sms must be the GPU's SM count (>= 1), got {sms}")
    cases = []
    for case in LAYER_CASES:
        case = case.on_gpu()
        cases += [dataclasses.replace(case, op=op) for op in POOL_OPS] \
            if case.op == "maxpool" else [case]
    return cases + extra_conv_cases(cases, sms, tensor_cores)


def extra_conv_cases(cases, sms: int, tensor_cores: bool = True) -> list:
    """For each conv kernel (but EVERY_BACKWARD's, and the TF32 ones without
    ``tensor_cores``) that the plans of ``cases`` do not pick on ``sms`` SMs, in name
    order, the first of EXTRA_CONV_SHAPES x EXTRA_BATCHES whose plans do: a case of net
    ``extra`` named ``for_<kernel>``, so that its rows say why they are there. A kernel
    no candidate takes stays out; the stage then fails on it, naming it."""
    from gpunet.benchmarks import Case
    wanted = {k for k in file_kernels("conv2d")
              if k not in EVERY_BACKWARD and (tensor_cores or "_tf32" not in k)}
    candidates = [(n, c, hw, k, f, pad) for c, hw, k, f, pad in EXTRA_CONV_SHAPES
                  for n in EXTRA_BATCHES]
    extra = []
    for kernel in sorted(wanted - planned_kernels(cases, sms, tensor_cores)):
        if kernel in planned_kernels(extra, sms, tensor_cores):
            continue  # an earlier extra case took it too
        for n, c, hw, k, f, pad in candidates:
            case = Case("extra", f"for_{kernel}", "conv", (n, c, hw, hw), (c, k, f),
                        (("stride", 1), ("padding", pad)))
            if kernel in planned_kernels([case], sms, tensor_cores):
                extra.append(case)
                break
    return extra


def plan_rows(case, tf32: bool, sms: int) -> list[dict]:
    """What gpunet.cuda.conv2d_plan picks for each pass of a conv case (the table of
    bench/gpu_plan.py), as report rows."""
    gpu_plan = bench_script("gpu_plan")  # imports gpunet: not at the top
    return [{"pass": name, "kernel": p.kernel, "tile": list(p.tile), "grid": list(p.grid),
             "split_k": p.split, "waves": round(p.waves, 2),
             "issued_over_useful": round(p.overwork, 2)}
            for name, p in gpu_plan.case_plans(case, "float32", tf32, sms)]


def tf32_changes_the_path(case, sms: int) -> bool:
    """Whether allowing TF32 changes a kernel the plans pick for the case (few
    channels and filters run the direct kernels either way: timed once)."""
    return [row["kernel"] for row in plan_rows(case, True, sms)] != \
        [row["kernel"] for row in plan_rows(case, False, sms)]


def planned_kernels(cases, sms: int, tensor_cores: bool = True) -> set[str]:
    """The conv kernels the plans pick for ``cases`` on ``sms`` SMs, in float32 and,
    with ``tensor_cores``, with TF32 allowed: what the stage times on such a GPU
    (no GPU needed)."""
    rows = [row for case in cases if case.op == "conv"
            for tf32 in ((False, True) if tensor_cores else (False,))
            for row in plan_rows(case, tf32, sms)]
    # a split forward's partial sums are added by a second launch (conv2d_plan.py)
    reduce = {"conv2d_fwd_reduce"} if any(row["pass"] == "forward" and row["split_k"] > 1
                                         for row in rows) else set()
    return {row["kernel"] for row in rows} | reduce


def _row(ctx, op, case, work, unit, ours, xp_path, theirs, launched, against="cudnn",
         **extra):
    """One timed row: ``case`` names it (``.id``, ``.shape``), ``against`` the library
    of the third time (``cudnn``; ``torch`` for an optimizer step)."""
    rate = lambda ms: float(f"{work / (ms * 1e-3) / 1e9:.4g}")  # noqa: E731
    ceiling = ctx.facts.get("sgemm_tflops", 0) * 1e3 if unit == "gflops" else \
        ctx.facts.get("copy_gbps", 0)
    row = {"op": op, "shape": case.id, "dims": list(case.shape), "kernels": launched,
           **extra, "gpunet_ms": round(ours, 4),
           "xp_path_ms": None if xp_path is None else round(xp_path, 4),
           f"{against}_ms": None if theirs is None else round(theirs, 4),
           f"gpunet_{unit}": rate(ours),
           f"xp_path_{unit}": None if xp_path is None else rate(xp_path),
           f"{against}_{unit}": None if theirs is None else rate(theirs),
           f"{against}_time_over_gpunet": None if theirs is None else round(theirs / ours, 3),
           "fraction_of_ceiling": round(rate(ours) / ceiling, 3) if ceiling else None}
    print({k: row[k] for k in ("op", "shape", "kernels", "gpunet_ms", f"{against}_ms")},
          flush=True)
    return row


def _pass_rows(ctx, case, names, unit, passes, cudnn, repeat, extras=({}, {})):
    """A forward and a backward row: ``passes`` holds, per pass, the kernel path and
    the xp path (or None) as functions; ``cudnn`` the two cuDNN times (or Nones);
    ``extras`` more fields for each row. Each kernel pass runs once with its
    launches recorded, then every path is timed by the one timer,
    gpunet.benchmarks.median_ms."""
    import cupy

    from gpunet.benchmarks import median_ms
    sync = cupy.cuda.Device().synchronize
    rows = []
    for name, work, (kernels, xp_path), theirs, extra in zip(
            names, (case.forward_work(), case.backward_work()), passes, cudnn, extras):
        with recorded_launches() as launched:
            kernels()
            sync()
        rows.append(_row(ctx, name, case, work, unit, median_ms(kernels, repeat, sync),
                         None if xp_path is None else median_ms(xp_path, repeat, sync),
                         theirs, list(launched), **extra))
    return rows


def _cudnn_times(torch, repeat, make_input, layer):
    """cuDNN's forward, and its backward as forward + backward less the forward."""
    if torch is None:
        return None, None
    from gpunet.benchmarks import median_ms
    tx = make_input().requires_grad_(True)
    params = [tx, *layer.parameters()]
    tdy = torch.ones_like(layer(tx))
    forward = median_ms(lambda: layer(tx), repeat, torch.cuda.synchronize)
    both = median_ms(lambda: torch.autograd.grad(layer(tx), params, tdy), repeat,
                     torch.cuda.synchronize)
    return forward, both - forward


def _conv_rows(ctx, case, torch, repeat, tf32):
    """Float32 (``tf32`` False, beside the xp path) or with TF32 allowed in gpunet
    and cuDNN alike."""
    import cupy

    from gpunet import ops
    from gpunet.cuda import runtime
    rng = numpy.random.default_rng(0)
    (n, c, h, w), (_, k, _), (r, s) = case.shape, case.args, case.kernel
    stride, pad = case.stride, case.padding
    x = cupy.asarray(rng.standard_normal((n, c, h, w), dtype=numpy.float32))
    weight = cupy.asarray(rng.standard_normal((k, c, r, s), dtype=numpy.float32))
    bias = cupy.zeros(k, numpy.float32)

    def forward(kernels):
        return ops.conv2d_forward(x, weight, bias, stride, pad, use_kernels=kernels)

    runtime.set_allow_tf32(tf32)
    if torch is not None:
        torch.backends.cudnn.allow_tf32 = tf32
    try:
        y, ctx_kernels = forward(True)
        dy = cupy.ones_like(y)
        paths = [[lambda: forward(True), None], [lambda: ctx_kernels.backward(dy), None]]
        if not tf32:  # the xp path has no TF32 variant
            _, ctx_xp = forward(False)
            paths[0][1], paths[1][1] = (lambda: forward(False)), (lambda: ctx_xp.backward(dy))
        layer = None if torch is None else torch.nn.Conv2d(c, k, (r, s), stride, pad).cuda()
        cudnn = _cudnn_times(torch, repeat, lambda: torch.randn(n, c, h, w, device="cuda"),
                             layer)
        plans = plan_rows(case, runtime.allow_tf32() and runtime.tf32_supported(cupy),
                          runtime.sm_count(cupy))
        extras = [{"tf32": tf32, "plans": [p for p in plans if p["pass"] in passes]}
                  for passes in (("forward",), ("data", "weight"))]
        suffix = "_tf32" if tf32 else ""
        rows = _pass_rows(ctx, case, ("conv2d_fwd" + suffix, "conv2d_bwd" + suffix), "gflops",
                          paths, cudnn, repeat, extras)
        for row in rows:  # the path timed is the path planned (else the labels lie)
            row["plan_launched"] = {p["kernel"] for p in row["plans"]} <= set(row["kernels"])
        return rows
    finally:
        runtime.set_allow_tf32(False)
        if torch is not None:
            torch.backends.cudnn.allow_tf32 = False


def _pool_rows(ctx, case, torch, repeat):
    import cupy

    from gpunet import ops
    kind = case.op[:3]  # max | avg
    (n, c, h, w), kernel, stride, pad = case.shape, case.kernel, case.stride, case.padding
    x = cupy.asarray(numpy.random.default_rng(0).standard_normal((n, c, h, w),
                                                                 dtype=numpy.float32))
    forward = getattr(ops, f"{kind}_pool2d_forward")
    (y, ctx_k), (_, ctx_xp) = (forward(x, kernel, stride, pad, use_kernels=k)
                               for k in (True, False))
    dy = cupy.ones_like(y)
    paths = [(lambda: forward(x, kernel, stride, pad, use_kernels=True),
              lambda: forward(x, kernel, stride, pad, use_kernels=False)),
             (lambda: ctx_k.backward(dy)[0], lambda: ctx_xp.backward(dy)[0])]
    layer = None
    if torch is not None:
        make = torch.nn.MaxPool2d if kind == "max" else torch.nn.AvgPool2d
        layer = make(kernel, stride, pad)
    cudnn = _cudnn_times(torch, repeat, lambda: torch.randn(n, c, h, w, device="cuda"), layer)
    return _pass_rows(ctx, case, (f"{kind}_pool2d_fwd", f"{kind}_pool2d_bwd"), "gbps", paths,
                      cudnn, repeat)


def _batch_norm_rows(ctx, case, torch, repeat):
    import cupy

    from gpunet import ops
    shape, c = case.shape, case.shape[1]
    x = cupy.asarray(numpy.random.default_rng(0).standard_normal(shape, dtype=numpy.float32))
    gamma, beta = cupy.ones(c, numpy.float32), cupy.zeros(c, numpy.float32)

    def forward(kernels):
        return ops.batch_norm_forward(x, gamma, beta, cupy.zeros(c, numpy.float32),
                                      cupy.ones(c, numpy.float32), training=True,
                                      use_kernels=kernels)

    (y, ctx_k), (_, ctx_xp) = forward(True), forward(False)
    dy = cupy.ones_like(y)
    paths = [(lambda: forward(True), lambda: forward(False)),
             (lambda: ctx_k.backward(dy), lambda: ctx_xp.backward(dy))]
    layer = None if torch is None else torch.nn.BatchNorm2d(c).cuda()
    cudnn = _cudnn_times(torch, repeat, lambda: torch.randn(*shape, device="cuda"), layer)
    return _pass_rows(ctx, case, ("batch_norm_fwd", "batch_norm_bwd"), "gbps", paths, cudnn,
                      repeat)


def _tile_k_rows(ctx, cases, repeat):
    """The GEMM convolutions with each TILE_K (a compile-time macro): which one a GPU
    prefers."""
    from gpunet.cuda import runtime
    original = runtime.compile_options
    rows = []
    try:
        for tile_k in TILE_K_CHOICES:
            runtime.compile_options = lambda dtype, t=tile_k: (*original(dtype), f"-DTILE_K={t}")
            runtime._module.cache_clear()
            for case in cases:
                for row in _conv_rows(ctx, case, None, repeat, False):
                    rows.append({"tile_k": tile_k, "op": row["op"], "shape": case.id,
                                 "kernels": row["kernels"], "gpunet_ms": row["gpunet_ms"],
                                 "gpunet_gflops": row["gpunet_gflops"]})
    finally:
        runtime.compile_options = original
        runtime._module.cache_clear()
    return rows


OPTIMIZER_NETS = ("lenet5", "alexnet_cifar")  # the dry run: the first alone
# name -> (gpunet.optim class, its hyperparameters, PyTorch's twin: torch.optim class and
# its arguments, the arrays one element touches: zero_grad writes g, the step reads w,
# g and the state and writes w and the state)
OPTIMIZER_TIMINGS = {
    "adam": ("Adam", {"lr": 1e-3}, ("Adam", {"lr": 1e-3}), 8),
    "sgd_momentum": ("SGD", {"lr": 1e-2, "momentum": 0.9},
                     ("SGD", {"lr": 1e-2, "momentum": 0.9}), 6),
    # the notes' momentum is PyTorch's SGD with dampening = momentum (from its second
    # step on; the same work at every step)
    "momentum": ("Momentum", {"lr": 1e-2, "beta": 0.9},
                 ("SGD", {"lr": 1e-2, "momentum": 0.9, "dampening": 0.9}), 6),
    "rmsprop": ("RMSProp", {"lr": 1e-3, "beta": 0.9}, ("RMSprop", {"lr": 1e-3, "alpha": 0.9}),
                6),
}


def _optimizer_rows(ctx, torch, repeat):
    """One optimizer step (``zero_grad`` and ``step``) over a model's parameters per
    net and optimizer: the kernels of kernels/optim.cu, the xp path (kernels off) and
    ``torch.optim``'s default implementation on CUDA; GB/s from the arrays each
    element touches."""
    import cupy

    from gpunet import config, models, optim
    from gpunet.backend import to_numpy
    from gpunet.benchmarks import median_ms
    sync = cupy.cuda.Device().synchronize
    rows = []
    for net in OPTIMIZER_NETS[:1] if ctx.dry else OPTIMIZER_NETS:
        for name, (ours, hyper, (theirs, their_hyper), arrays) in OPTIMIZER_TIMINGS.items():
            steps, params = {}, None
            for kernels in (True, False):
                params = getattr(models, net)().to("cuda", "float32").parameters()
                optimizer = getattr(optim, ours)(params, **hyper)

                def step(optimizer=optimizer, kernels=kernels):
                    with config.override(kernels=kernels):
                        optimizer.zero_grad()
                        optimizer.step()

                steps[kernels] = step
            with recorded_launches() as launched:
                steps[True]()
                sync()
            elements = sum(p.data.size for p in params)
            case = types.SimpleNamespace(id=f"{net}/{name}",
                                         shape=tuple(p.shape for p in params))
            theirs_ms = None
            if torch is not None:
                tensors = [torch.tensor(to_numpy(p.data), device="cuda", requires_grad=True)
                           for p in params]
                for tensor in tensors:
                    tensor.grad = torch.zeros_like(tensor)
                twin = getattr(torch.optim, theirs)(tensors, **their_hyper)

                def torch_step(twin=twin):
                    twin.zero_grad(set_to_none=False)  # in place, as gpunet's: a step to time
                    twin.step()

                theirs_ms = median_ms(torch_step, repeat, torch.cuda.synchronize)
            rows.append(_row(ctx, f"{name}_step", case, 4.0 * arrays * elements, "gbps",
                             median_ms(steps[True], repeat, sync),
                             median_ms(steps[False], repeat, sync), theirs_ms, list(launched),
                             against="torch", elements=elements))
    return rows


def untimed_kernels(rows, tensor_cores: bool) -> list[str]:
    """The kernels of kernels/*.cu no row launched (the TF32 ones, ``_tf32`` in the
    name, excepted on a GPU without TF32 tensor cores, where they are never chosen)."""
    launched = {k for row in rows for k in row["kernels"]}
    return sorted(k for k in kernel_names() - launched
                  if tensor_cores or "_tf32" not in k)


def _train_steps(ctx) -> dict:
    """``gpunet bench --device cuda --op step`` in a child process, its rows kept."""
    folder = os.path.join(ctx.out, "bench")
    cmd = [sys.executable, "-m", "gpunet", "bench", "--device", "cuda", "--op", "step",
           "--rounds", "1" if ctx.dry else "3", "--out", folder]
    env = dict(os.environ)
    if ctx.dry:  # training steps at batch 128 are far beyond the emulator: the xp path
        cmd += ["--net", "lenet5", "--no-torch"]
        env["GPUNET_KERNELS"] = "0"
    timeout = ctx.left_s() - 2
    try:
        done = run_bounded(cmd, max(timeout, 1), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        step = {"exit_code": done.returncode, "table": done.stdout[-4000:]}
        if done.returncode:
            step["stderr_tail"] = done.stderr[-2000:]
        saved = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        if saved:
            with open(os.path.join(folder, saved[-1])) as f:
                step["rows"] = json.load(f)["rows"]
            shutil.rmtree(folder)  # its rows are in the report: one file less to bring back
    except subprocess.TimeoutExpired:
        step = {"exit_code": None, "table": f"stopped after {timeout:.0f} s"}
    return step


def stage_timings(ctx: StageContext) -> None:
    """Every path of every case beside the xp path and cuDNN, the rows emitted as
    they come; the kernels timed and not; the GEMMs at each TILE_K; the training
    steps. Fails on an untimed kernel, a plan its pass did not launch, or a failed
    ``gpunet bench``."""
    import cupy

    from gpunet.benchmarks import cuda_torch
    from gpunet.cuda import runtime
    torch = None if ctx.dry else cuda_torch()
    repeat = 2 if ctx.dry else 20
    sms, tensor_cores = runtime.sm_count(cupy), runtime.tf32_supported(cupy)
    cases = timing_cases(ctx.dry, sms, tensor_cores)
    rows = []
    for case in cases:
        if case.op == "conv":
            rows += _conv_rows(ctx, case, torch, repeat, False)
            if tensor_cores and tf32_changes_the_path(case, sms):
                rows += _conv_rows(ctx, case, torch, max(2, repeat // 2), True)
        elif case.op in POOL_OPS:
            rows += _pool_rows(ctx, case, torch, repeat)
        else:
            rows += _batch_norm_rows(ctx, case, torch, repeat)
        ctx.emit(kernels=rows)
    rows += _optimizer_rows(ctx, torch, repeat)
    ctx.emit(kernels=rows)
    missing = untimed_kernels(rows, tensor_cores)
    ctx.emit(kernels_timed=sorted({k for row in rows for k in row["kernels"]}),
             kernels_not_timed=missing)
    # the dry run: one GEMM case (each TILE_K recompiles, in the emulator a minute)
    gemm_cases = [case for case in cases if case.id in TILE_K_CASES] or \
        [case for case in cases if case.op == "conv"][:1]
    ctx.emit(tile_k=_tile_k_rows(ctx, gemm_cases, repeat))
    step = _train_steps(ctx)
    ctx.emit(train_steps=step)
    unplanned = [f"{row['op']} {row['shape']}" for row in rows
                 if row.get("plan_launched") is False]
    for what, names in (("no row launched", missing), ("plan not launched", unplanned)):
        if names:
            print(f"timings: {what}: {', '.join(names)}", file=sys.stderr, flush=True)
    if missing or unplanned or step["exit_code"] != 0:
        sys.exit(1)
