"""Peak memory of a LeNet-5 epoch and of AlexNet-CIFAR steps, gpunet beside
PyTorch, each run in a fresh process: resident memory on the CPU, device memory
on a GPU (``gpunet bench --memory``)."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from .. import backend, losses, optim
from ..train import train_step
from .cases import STEP_WORKLOADS
from .runners import _batch
from .twin import import_torch, torch_model, torch_unusable

MEMORY_WORKLOADS = ("lenet5_epoch", "alexnet_cifar_step")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (Linux >= 4.0); False where it can't."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak resident memory since the last reset (``VmHWM``), else over the lifetime."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# What memory_child measures: the process's resident memory on the CPU; on a GPU
# the device memory of CuPy's pool (or PyTorch's caching allocator).
MEASURES = {"cpu": "resident memory (RSS)", "cupy": "GPU memory held by CuPy's pool",
            "torch-cuda": "GPU memory allocated by PyTorch"}


def memory_child(library: str, workload: str, images: int = 60000,
                 device: str = "cpu") -> dict:
    """Run ``workload`` in this process on ``device`` and return its peak memory above
    what was held just before (imports, model and data included there): resident
    memory on the CPU; on a GPU, device memory. CuPy's pool keeps freed blocks for
    reuse, so what it holds after the run (``total_bytes``) is its high-water mark.
    Meant for a fresh process, where nothing else has grown the heap or the pool."""
    backend.tune_cpu_allocator()  # both libraries' rows in a process set up as fit's
    net = "lenet5" if workload == "lenet5_epoch" else "alexnet_cifar"
    make, batch, shape = STEP_WORKLOADS[net]
    n = images if workload == "lenet5_epoch" else 2 * batch  # two steps: the first allocates
    x_all, y_all = _batch((n, *shape))
    gpu = device.startswith("cuda")
    if library == "torch":
        import torch
        tdev = torch.device(device if gpu else "cpu")
        x_all, y_all = torch.from_numpy(x_all), torch.from_numpy(y_all)
        torch.manual_seed(0)
        model = torch_model(net, torch).to(tdev)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        loss = torch.nn.CrossEntropyLoss()

        def step(x, y):
            opt.zero_grad()
            loss(model(x.to(tdev)), y.to(tdev)).backward()
            opt.step()
        measure = "torch-cuda" if gpu else "cpu"
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(tdev)

            def used():
                return torch.cuda.memory_allocated(tdev) / 2**20

            def high():
                return torch.cuda.max_memory_allocated(tdev) / 2**20
    else:
        dev = backend.set_device(device)
        model, loss = make(), losses.SoftmaxCrossEntropy()
        opt = optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step(x, y):  # batches move to the device as in fit
            train_step(model, loss, opt, dev.xp.asarray(x), dev.xp.asarray(y),
                       check_finite=False)
        measure = "cupy" if gpu else "cpu"
        if gpu:
            pool = dev.xp.get_default_memory_pool()
            pool.free_all_blocks()

            def used():
                return pool.total_bytes() / 2**20
            high = used
    if not gpu:
        used, high = _rss_mb, _peak_rss_mb
    before = used()
    reset = gpu or _reset_peak_rss()
    start = time.perf_counter()
    for i in range(0, n, batch):
        step(x_all[i:i + batch], y_all[i:i + batch])
    if library == "gpunet":
        backend.get_device().synchronize()
    seconds = time.perf_counter() - start
    peak = high()
    return {"library": library, "workload": workload, "device": device, "measure": measure,
            "before_mb": before, "peak_mb": peak, "extra_mb": peak - before,
            "seconds": seconds, "peak_reset": reset}


def memory(workloads=MEMORY_WORKLOADS, images: int = 60000, with_torch: bool = True,
           device: str = "cpu") -> list:
    """Each workload once per library on ``device``, each run in a fresh Python
    process (PyTorch only where it can use the device: :func:`torch_unusable`)."""
    libraries = ["gpunet"] + (["torch"] if with_torch and import_torch()
                              and torch_unusable(device) is None else [])
    rows = []
    for workload in workloads:
        for library in libraries:
            code = ("import json, sys; from gpunet.benchmarks import memory_child; "
                    "print(json.dumps(memory_child("
                    f"{library!r}, {workload!r}, {images}, {device!r})))")
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  check=False, env={**os.environ, "GPUNET_DEVICE": device})
            if done.returncode != 0:
                raise RuntimeError(f"memory run {library} {workload} failed:\n{done.stderr}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def format_memory(rows: list[dict]) -> str:
    """The table, under a line saying what was measured on which device."""
    measures = sorted({(r.get("device", "cpu"), MEASURES[r.get("measure", "cpu")])
                       for r in rows})
    lines = ["peak memory: " + "; ".join(f"{what} on {device}" for device, what in measures),
             "workload             library  peak above start (MiB)  time (s)  vs torch"]
    extra = {(r["workload"], r["library"]): r["extra_mb"] for r in rows}
    for r in rows:
        theirs = extra.get((r["workload"], "torch"))
        ratio = "" if theirs in (None, 0) or r["library"] == "torch" else \
            f"{r['extra_mb'] / theirs:.2f}x"
        lines.append(f"{r['workload']:<20} {r['library']:<8} {r['extra_mb']:>22.1f}  "
                     f"{r['seconds']:>8.2f}  {ratio}")
    return "\n".join(lines)
