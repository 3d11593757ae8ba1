"""LeNet-5 with batch norm: a training step, gpunet beside PyTorch's CPU build.

``gpunet bench --op step`` times LeNet-5 without batch norm; this times the same
step (batch 128, SGD with momentum) with ``models.lenet5(batch_norm=True)``, the
runners taking turns round after round (``benchmarks.time_side_by_side``), and
prints paired ratios (PyTorch's time over gpunet's: above 1.0 gpunet is faster).
``--before REV`` adds gpunet with ``gpunet/cpu/batchnorm.py`` as it was at git
revision REV (loaded beside the current one, in the same process), for a
before/after ratio measured side by side; REV must have its forward return ``(y,
ctx)`` (from the commit "backends are leaves" on). ``--json PATH`` writes the rounds.

    PYTHONPATH=. python bench/bn_step_cpu.py [--rounds 7] [--before REV] [--json out.json]
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import subprocess
import tempfile

import numpy

from gpunet import benchmarks, models
from gpunet.ops import batchnorm as ops_batchnorm

NET = "lenet5_bn"


def _cpu_batchnorm_at(rev: str):
    """``gpunet/cpu/batchnorm.py`` of git revision ``rev``, as a module of gpunet.cpu."""
    text = subprocess.run(["git", "show", f"{rev}:gpunet/cpu/batchnorm.py"], check=True,
                          capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "batchnorm_before.py")
    with open(path, "w") as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location("gpunet.cpu.batchnorm_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with_cpu_batchnorm(step, implementation):
    def run():
        ops_batchnorm.IMPLEMENTATIONS["cpu"] = implementation
        step()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--before")
    parser.add_argument("--json")
    args = parser.parse_args()
    benchmarks.STEP_WORKLOADS[NET] = (functools.partial(models.lenet5, batch_norm=True), 128,
                                      (1, 32, 32))
    case = benchmarks.Case(NET, "train_step", "step", (128, 1, 32, 32))
    import torch
    current = ops_batchnorm.IMPLEMENTATIONS["cpu"]
    runners = {"gpunet": _with_cpu_batchnorm(benchmarks.gpunet_runner(case), current),
               "torch": benchmarks.torch_runner(case, torch)}
    if args.before:
        before = _cpu_batchnorm_at(args.before)
        runners["gpunet_before"] = _with_cpu_batchnorm(benchmarks.gpunet_runner(case),
                                                       before.forward)
    times = benchmarks.time_side_by_side(runners, rounds=args.rounds)
    row = {"case": "lenet5 batch_norm=True train_step, batch 128",
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
