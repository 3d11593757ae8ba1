"""Timing: the libraries taking turns round after round on a shared CPU
(:func:`time_side_by_side`, :func:`run`), the table and report of ``gpunet
bench``, and :func:`median_ms`, the one timer of ``make gpu-check``."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable

import numpy

from .. import __version__, backend, cpu
from .cases import CASES, Case
from .runners import gpunet_runner, torch_runner
from .twin import import_torch, torch_unusable

# OpenBLAS's and PyTorch's worker threads spin for a while after their last job;
# switching libraries without a pause would time one against the other's spinning.
SWITCH_PAUSE_S = 0.3
# After the pause the machine needs a moment too: on the 2-core VM the first
# steps after an idle pause ran slower (bench/results/cpu-choices-2026-11.md:
# waking an idle virtual CPU is slow, and gpunet's threads hand work over many
# times a step), so each turn first runs untimed for this long; training runs its
# steps back to back.
SETTLE_S = 0.3


def time_side_by_side(runners: dict, rounds: int = 5, min_round_s: float = 0.2,
                      warmup: int = 2) -> dict:
    """Seconds per call of each runner, one entry per round. The runners take turns
    round after round, so that a noisy neighbour slows them alike; each turn
    repeats its call until ``min_round_s`` has passed. Warm-up calls (at least
    ``warmup`` in the first round, then for ``SETTLE_S`` in every turn) are not
    timed."""
    times = {name: [] for name in runners}
    for round_ in range(rounds):
        for name, run in runners.items():
            time.sleep(SWITCH_PAUSE_S)
            for _ in range(warmup if round_ == 0 else 1):
                run()
            _repeat(run, SETTLE_S)
            calls, elapsed = _repeat(run, min_round_s)
            times[name].append(elapsed / calls)
    return times


def _repeat(run, seconds: float) -> tuple[int, float]:
    """Call ``run`` until ``seconds`` have passed (at least once): (calls, seconds taken)."""
    calls, start = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls, elapsed


def paired_ratio(theirs: list, ours: list) -> float:
    """Median over rounds of their time over ours, each pair timed back to back.
    On a shared machine the load drifts over seconds: a pair sees the same load,
    where the two medians may each catch a different one."""
    return float(numpy.median(numpy.asarray(theirs) / numpy.asarray(ours)))


def run(cases=None, device: str = "cpu", rounds: int = 5, min_round_s: float = 0.2,
        with_torch: bool = True, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Time each case with gpunet (and PyTorch when installed and able to use
    ``device``: see :func:`torch_unusable`); one row per case."""
    torch = import_torch() if with_torch and torch_unusable(device) is None else None
    rows = []
    for case in CASES if cases is None else cases:
        if progress:
            progress(case.id)
        runners = {"gpunet": gpunet_runner(case, device)}
        if torch is not None:
            runners["torch"] = torch_runner(case, torch, device)
        times = time_side_by_side(runners, rounds, min_round_s)
        ours = float(numpy.median(times["gpunet"]))
        if torch is None:
            rows.append(make_row(case, device, ours, None))
        else:
            rows.append(make_row(case, device, ours, float(numpy.median(times["torch"])),
                                 paired_ratio(times["torch"], times["gpunet"])))
    return rows


def make_row(case: Case, device: str, gpunet_s: float, torch_s: float | None,
             ratio: float | None = None) -> dict:
    """One line of the table: median times, PyTorch's time over ours (``ratio``, by
    default the ratio of the medians), and our rate."""
    amount, unit = case.work()
    if ratio is None and torch_s is not None:
        ratio = torch_s / gpunet_s
    row = {"net": case.net, "case": case.name, "op": case.op, "shape": list(case.shape),
           "device": device, "gpunet_ms": gpunet_s * 1e3,
           "torch_ms": None if torch_s is None else torch_s * 1e3,
           "ratio": ratio,
           "unit": "GFLOP/s" if unit == "flop" else "GB/s", "gpunet_rate": amount / gpunet_s / 1e9}
    if case.op == "step":
        row["gpunet_images_per_s"] = case.shape[0] / gpunet_s
        row["torch_images_per_s"] = None if torch_s is None else case.shape[0] / torch_s
    return row


def format_table(rows: list[dict]) -> str:
    header = ("op", "net/case", "shape", "device", "gpunet ms", "torch ms", "ratio", "rate")
    lines = [header]
    for r in rows:
        torch_ms = "-" if r["torch_ms"] is None else f"{r['torch_ms']:.2f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append((r["op"], f"{r['net']}/{r['case']}", "x".join(map(str, r["shape"])),
                      r["device"], f"{r['gpunet_ms']:.2f}", torch_ms, ratio,
                      f"{r['gpunet_rate']:.1f} {r['unit']}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) if i < 4 else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(line, widths))) for line in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def environment(device: str) -> dict:
    torch = import_torch()
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10,
                                cwd=os.path.dirname(__file__)).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"gpunet": __version__, "commit": commit, "python": platform.python_version(),
            "numpy": numpy.__version__, "torch": torch.__version__ if torch else None,
            "torch_threads": torch.get_num_threads() if torch else None,
            "gpunet_threads": cpu.num_threads(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "device": device, "device_name": backend.device_name(device),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def save(report: dict, folder: str, stem: str) -> str:
    """Write ``report`` as ``folder/stem-<date>.json`` atomically; returns the path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{stem}-{time.strftime('%Y-%m-%d-%H%M%S')}.json")
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(partial, path)
    return path



def median_ms(fn, repeat: int, synchronize: Callable[[], object]) -> float:
    """Median milliseconds of ``fn()`` followed by ``synchronize()`` (the device's:
    gpunet's or PyTorch's), after one untimed call that absorbs compilation and
    cuDNN's algorithm search. The same wall-clock timer for every library, launches
    included: a small net is launch-bound, so a launch is time."""
    fn()
    synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return float(numpy.median(times)) * 1e3
