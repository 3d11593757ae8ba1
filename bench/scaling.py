"""Data-parallel scaling on this machine: training-step throughput on 1, 2, ...
processes (each with the same per-process batch), the time the gradient all-reduce
takes per step, and the all-reduce's time against the bytes it moves.

    python bench/scaling.py --processes 1 2 [--net lenet5] [--steps 30]

runs ``mpiexec -n P python bench/scaling.py --worker ...`` for each P and writes
``bench/results/scaling-<date>.json`` (``make scaling``). Each process takes its
share of the cores for gpunet's threads (gpunet.distributed.init), so on a 2-core
machine two processes compete for what one process had: the images/s show what
the second process buys, the all-reduce times what it costs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

REDUCE_SIZES = [2**k for k in range(8, 23, 2)]  # float32 values: 1 KiB .. 16 MiB


def worker(args) -> dict:
    import gpunet
    from gpunet import benchmarks, distributed, losses, optim
    from gpunet.train import train_step

    gpunet.set_device("cpu")
    gpunet.backend.tune_cpu_allocator()  # its steps time as fit's (import leaves glibc alone)
    world = distributed.init()
    make, _, shape = benchmarks.STEP_WORKLOADS[args.net]
    gpunet.manual_seed(0)
    model = make()
    world.broadcast_parameters(model)
    loss, optimizer = losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=1e-4,
                                                               momentum=0.9)
    rng = numpy.random.default_rng(world.rank)
    x = rng.standard_normal((args.batch, *shape), numpy.float32)
    y = rng.integers(0, 10, args.batch)
    reduce_s = []
    reduce = world.all_reduce_gradients

    def timed_reduce(m):
        start = time.perf_counter()
        reduce(m)
        reduce_s.append(time.perf_counter() - start)

    world.all_reduce_gradients = timed_reduce
    for _ in range(args.warmup):
        train_step(model, loss, optimizer, x, y, check_finite=False, world=world)
    reduce_s.clear()
    world.comm.Barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step(model, loss, optimizer, x, y, check_finite=False, world=world)
    world.comm.Barrier()
    seconds = time.perf_counter() - start
    gradient_bytes = sum(p.grad.nbytes for p in model.parameters())

    curve = []
    for size in REDUCE_SIZES:
        arrays = [numpy.ones(size, numpy.float32)]
        world.all_reduce(arrays, mean=True)  # warm
        world.comm.Barrier()
        repeats = max(3, min(200, 2**22 // size))
        start = time.perf_counter()
        for _ in range(repeats):
            world.all_reduce(arrays, mean=True)
        world.comm.Barrier()
        curve.append({"bytes": 4 * size,
                      "ms": (time.perf_counter() - start) / repeats * 1e3})
    times = world.comm.gather(seconds)
    reduces = world.comm.gather(float(numpy.median(reduce_s)) if reduce_s else 0.0)
    return {"processes": world.size, "net": args.net, "batch_per_process": args.batch,
            "steps": args.steps, "seconds": max(times),
            "images_per_s": world.size * args.batch * args.steps / max(times),
            # the rank that arrives last at the reduction waits least: its time is the
            # reduction's cost; the others' include waiting for it
            "all_reduce_ms_per_step": 1e3 * min(reduces),
            "all_reduce_and_wait_ms_per_step": 1e3 * max(reduces),
            "gradient_bytes": gradient_bytes,
            "gpunet_threads_per_process": gpunet.cpu.num_threads(),
            "all_reduce_curve": curve} if world.is_root else {}


def driver(args) -> int:
    from gpunet import benchmarks
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or \
        shutil.which("mpiexec")
    if mpiexec is None:
        print("scaling: no mpiexec; pip install 'gpunet[mpi]'", file=sys.stderr)
        return 2
    rows = []
    for processes in args.processes:
        cmd = [mpiexec, "-n", str(processes), sys.executable, os.path.abspath(__file__),
               "--worker", "--net", args.net, "--batch", str(args.batch), "--steps",
               str(args.steps), "--warmup", str(args.warmup)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                              env=dict(os.environ, PYTHONWARNINGS="ignore"))
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]["images_per_s"] / rows[0]["processes"]
    print(f"{'processes':>9}  {'images/s':>9}  {'per process':>11}  {'efficiency':>10}  "
          f"{'all-reduce ms/step':>18}  {'with waiting':>12}  gradient MB")
    for r in rows:
        print(f"{r['processes']:>9}  {r['images_per_s']:>9.0f}  "
              f"{r['images_per_s'] / r['processes']:>11.0f}  "
              f"{r['images_per_s'] / r['processes'] / base:>10.2f}  "
              f"{r['all_reduce_ms_per_step']:>18.3f}  "
              f"{r['all_reduce_and_wait_ms_per_step']:>12.3f}  {r['gradient_bytes'] / 2**20:.2f}")
    if len(rows) > 1:
        print("\nall-reduce on", rows[-1]["processes"], "processes:")
        for point in rows[-1]["all_reduce_curve"]:
            print(f"  {point['bytes'] / 2**10:>8.0f} KiB  {point['ms']:8.3f} ms  "
                  f"{point['bytes'] / point['ms'] / 1e6:6.2f} GB/s")
    if args.out:
        report = {"environment": benchmarks.environment("cpu"), "rows": rows}
        print("saved", benchmarks.save(report, args.out, f"scaling-{args.net}"))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--net", default="lenet5", choices=["lenet5", "alexnet_cifar"])
    parser.add_argument("--batch", type=int, default=64, help="images per process and step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        row = worker(args)
        if row:
            print(json.dumps(row), flush=True)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
