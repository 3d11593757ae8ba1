"""LeNet-5 with batch norm: a training step, gpunet beside PyTorch's CPU build.

``gpunet bench --op step`` times LeNet-5 without batch norm; this times the same
step (batch 128, SGD with momentum) with ``models.lenet5(batch_norm=True)``, the
two libraries taking turns round after round (``benchmarks.time_side_by_side``), and
prints the paired ratio (PyTorch's time over gpunet's: above 1.0 gpunet is
faster). ``--json PATH`` writes the rounds.

    PYTHONPATH=. python bench/bn_step_cpu.py [--rounds 7] [--json out.json]
"""
from __future__ import annotations

import argparse
import functools
import json

import numpy

from gpunet import benchmarks, models

NET = "lenet5_bn"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json")
    args = parser.parse_args()
    benchmarks.STEP_WORKLOADS[NET] = (functools.partial(models.lenet5, batch_norm=True), 128,
                                      (1, 32, 32))
    case = benchmarks.Case(NET, "train_step", "step", (128, 1, 32, 32))
    import torch
    runners = {"gpunet": benchmarks.gpunet_runner(case),
               "torch": benchmarks.torch_runner(case, torch)}
    times = benchmarks.time_side_by_side(runners, rounds=args.rounds)
    ratio = benchmarks.paired_ratio(times["torch"], times["gpunet"])
    row = {"case": "lenet5 batch_norm=True train_step, batch 128",
           "gpunet_ms": float(numpy.median(times["gpunet"])) * 1e3,
           "torch_ms": float(numpy.median(times["torch"])) * 1e3, "ratio": ratio,
           "rounds": {k: [t * 1e3 for t in v] for k, v in times.items()}}
    print(f"gpunet {row['gpunet_ms']:.2f} ms, torch {row['torch_ms']:.2f} ms, "
          f"ratio {ratio:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
