"""LeNet-5 with batch norm: a training step, gpunet beside PyTorch's CPU build.

``gpunet bench --op step`` times LeNet-5 without batch norm; this times the same
step (batch 128, SGD with momentum) with ``models.lenet5(batch_norm=True)``, the
runners taking turns round after round (``benchmarks.time_side_by_side``), and
prints paired ratios (PyTorch's time over gpunet's: above 1.0 gpunet is faster).
``--per-layer`` prints each layer's forward and backward milliseconds in both
libraries instead (medians over the rounds, timed inside a step; PyTorch's by
module hooks, which see no backward of its first layer: its input needs no
gradient). ``--before REV`` adds gpunet with ``gpunet/cpu/batchnorm.py`` as it
was at git revision REV (loaded beside the current one, in the same process), for a
before/after ratio measured side by side; REV must have its forward return ``(y,
ctx)`` (from the commit "backends are leaves" on). ``--modules batchnorm,conv2d,pool2d``
names the ``gpunet/cpu`` modules ``--before`` takes from REV (default: batchnorm).
``--no-batch-norm`` times plain LeNet-5 instead. ``--cpu-time`` times each turn of 20
steps by the calling thread's CPU time (``time.thread_time``), which leaves out the
time other processes held the core: meaningful with one thread each
(``OMP_NUM_THREADS=1 GPUNET_NUM_THREADS=1``), where all the work runs on the calling
thread. ``--json PATH`` writes the rounds.

    PYTHONPATH=. python bench/bn_step_cpu.py [--rounds 7] [--before REV] [--json out.json]
                                             [--modules M,..] [--no-batch-norm] [--cpu-time]
                                             [--per-layer]
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import subprocess
import tempfile
import time

import numpy

from gpunet import benchmarks, models
from gpunet.ops import batchnorm as ops_batchnorm

NET = "lenet5_bn"


def _cpu_module_at(rev: str, name: str = "batchnorm"):
    """``gpunet/cpu/<name>.py`` of git revision ``rev``, as a module of gpunet.cpu."""
    text = subprocess.run(["git", "show", f"{rev}:gpunet/cpu/{name}.py"], check=True,
                          capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), f"{name}_before.py")
    with open(path, "w") as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location(f"gpunet.cpu.{name}_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_modules(modules: dict):
    """``{name: module}`` as the ops dispatch to them: batch norm through its
    IMPLEMENTATIONS entry, the others through ``gpunet.ops.<name>.cpu_<name>``."""
    for name, module in modules.items():
        if name == "batchnorm":
            ops_batchnorm.IMPLEMENTATIONS["cpu"] = module.forward
        else:
            setattr(importlib.import_module(f"gpunet.ops.{name}"), f"cpu_{name}", module)


def _with_cpu_modules(step, modules: dict):
    def run():
        _cpu_modules(modules)
        step()
    return run


def _gpunet_layer_times(model, loss, x, labels):
    """A step's ``[(forward s, backward s)]`` per layer of the Sequential ``model``."""
    from gpunet.cpu import parallel
    times = []
    with parallel.single_threaded_blas():  # as Sequential's pass holds it
        for layer in model:
            start = time.perf_counter()
            x = layer.forward(x)
            times.append([time.perf_counter() - start, 0.0])
        loss.forward(x, labels)
        dy = loss.backward()
        for i, layer in reversed(list(enumerate(model))):
            start = time.perf_counter()
            dy = layer.backward(dy, input_grad=False) if i == 0 else layer.backward(dy)
            times[i][1] = time.perf_counter() - start
    return times


def _torch_layer_times(torch, model, loss, x, labels):
    """:func:`_gpunet_layer_times` of a ``torch.nn.Sequential``, by module hooks."""
    marks, handles = {}, []
    for i, layer in enumerate(model):
        def mark(key):
            return lambda *_: marks.__setitem__(key, time.perf_counter())
        handles += [layer.register_forward_pre_hook(mark((i, "f0"))),
                    layer.register_forward_hook(mark((i, "f1"))),
                    layer.register_full_backward_pre_hook(mark((i, "b0"))),
                    layer.register_full_backward_hook(mark((i, "b1")))]
    try:
        model.zero_grad()
        loss(model(x), labels).backward()
    finally:
        for handle in handles:
            handle.remove()

    def span(i, kind):
        ends = (i, kind + "0"), (i, kind + "1")
        return marks[ends[1]] - marks[ends[0]] if all(e in marks for e in ends) else float("nan")
    return [[span(i, "f"), span(i, "b") if i else float("nan")] for i in range(len(model))]


def per_layer(rounds: int) -> None:
    """Each layer's median forward and backward ms, the libraries taking turns."""
    import torch

    from gpunet import backend, losses
    from gpunet.benchmarks.twin import torch_model
    backend.tune_cpu_allocator()
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((128, 1, 32, 32), numpy.float32)
    labels = rng.integers(0, 10, 128)
    backend.manual_seed(0)
    model = models.lenet5(batch_norm=True)
    theirs = torch_model(NET, torch)
    runs = {"gpunet": lambda: _gpunet_layer_times(model, losses.SoftmaxCrossEntropy(), x,
                                                   labels),
            "torch": lambda: _torch_layer_times(torch, theirs, torch.nn.CrossEntropyLoss(),
                                                torch.from_numpy(x), torch.from_numpy(labels))}
    samples = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            time.sleep(benchmarks.timing.SWITCH_PAUSE_S)
            for _ in range(5):
                run()
            samples[name] += [run() for _ in range(10)]
    medians = {name: numpy.median(numpy.asarray(s), axis=0) * 1e3 for name, s in samples.items()}
    print(f"{'layer':16s} {'gpunet fwd':>10s} {'bwd':>6s} {'torch fwd':>10s} {'bwd':>6s}")
    for i, layer in enumerate(model):
        (gf, gb), (tf, tb) = medians["gpunet"][i], medians["torch"][i]
        print(f"{i:2d} {type(layer).__name__:13s} {gf:10.3f} {gb:6.3f} {tf:10.3f} {tb:6.3f}")
    print(f"load average {os.getloadavg()}")


def _cpu_time_side_by_side(runners: dict, rounds: int, steps: int = 20) -> dict:
    """Seconds of the calling thread's CPU time per call of each runner, one entry
    per round, the runners taking turns as in ``benchmarks.time_side_by_side``."""
    times = {name: [] for name in runners}
    for round_ in range(rounds):
        for name, run in runners.items():
            time.sleep(benchmarks.timing.SWITCH_PAUSE_S)
            for _ in range(3 if round_ == 0 else 1):
                run()
            start = time.thread_time()
            for _ in range(steps):
                run()
            times[name].append((time.thread_time() - start) / steps)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--before")
    parser.add_argument("--json")
    parser.add_argument("--per-layer", action="store_true")
    parser.add_argument("--modules", default="batchnorm")
    parser.add_argument("--no-batch-norm", action="store_true")
    parser.add_argument("--cpu-time", action="store_true")
    args = parser.parse_args()
    benchmarks.STEP_WORKLOADS[NET] = (functools.partial(models.lenet5, batch_norm=True), 128,
                                      (1, 32, 32))
    if args.per_layer:
        per_layer(args.rounds)
        return
    net = "lenet5" if args.no_batch_norm else NET
    case = benchmarks.Case(net, "train_step", "step", (128, 1, 32, 32))
    import torch
    names = args.modules.split(",")
    current = {name: importlib.import_module(f"gpunet.cpu.{name}") for name in names}
    runners = {"gpunet": _with_cpu_modules(benchmarks.gpunet_runner(case), current),
               "torch": benchmarks.torch_runner(case, torch)}
    if args.before:
        before = {name: _cpu_module_at(args.before, name) for name in names}
        runners["gpunet_before"] = _with_cpu_modules(benchmarks.gpunet_runner(case), before)
    times = (_cpu_time_side_by_side(runners, args.rounds) if args.cpu_time
             else benchmarks.time_side_by_side(runners, rounds=args.rounds))
    row = {"case": f"lenet5 batch_norm={not args.no_batch_norm} train_step, batch 128",
           "clock": "thread CPU time" if args.cpu_time else "wall",
           "median_ms": {k: float(numpy.median(v)) * 1e3 for k, v in times.items()},
           "torch_over": {k: benchmarks.paired_ratio(times["torch"], v)
                          for k, v in times.items() if k != "torch"},
           "load_average": os.getloadavg(),
           "rounds_ms": {k: [t * 1e3 for t in v] for k, v in times.items()}}
    if args.before:
        row["before_over_after"] = benchmarks.paired_ratio(times["gpunet_before"],
                                                           times["gpunet"])
    print(json.dumps({k: v for k, v in row.items() if k != "rounds_ms"}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
