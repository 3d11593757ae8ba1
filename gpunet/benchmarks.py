"""What ``gpunet bench`` and ``pytest bench/`` time: layer forward+backward at the
shapes of LeNet-5, the CIFAR AlexNet, AlexNet-224 and VGG-16, and one training
step of LeNet-5 and of the CIFAR AlexNet; each beside its PyTorch twin when
PyTorch is installed. Also the peak-memory comparison.

Every case carries the work it does (FLOPs for convolutions and steps, bytes moved
for pooling and batch norm), so a time becomes GFLOP/s or GB/s. ``ratio`` is
PyTorch's time over ours: above 1, gpunet is faster.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import numpy

from . import __version__, backend, cpu, losses, models, nn, optim
from .train import train_step

# -- cases --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One thing to time: a layer's forward + backward, or a whole training step.
    ``shape`` has the batch of a CPU run; ``gpu_batch`` is the batch ``make
    gpu-check`` times the layer at (:meth:`on_gpu`)."""
    net: str
    name: str
    op: str  # conv | maxpool | batchnorm | step
    shape: tuple  # input (N, C, H, W)
    args: tuple = ()  # the layer's constructor arguments (the same for PyTorch)
    kwargs: tuple = ()  # ((name, value), ...)
    gpu_batch: int | None = None

    @property
    def id(self) -> str:
        return f"{self.net}/{self.name}"

    def on_gpu(self) -> Case:
        """The case at its GPU batch."""
        return dataclasses.replace(self, shape=(self.gpu_batch or self.shape[0],
                                                *self.shape[1:]))

    def work(self) -> tuple[float, str]:
        """``(amount, unit)`` of forward + backward: FLOPs, or bytes for memory-bound ops."""
        if self.op == "step":
            return step_flops(self.net, self.shape[0]), "flop"
        return self.forward_work() + self.backward_work(), "flop" if self.op == "conv" else "byte"

    def forward_work(self) -> float:
        """FLOPs (convolution) or bytes moved (pooling, batch norm, 4-byte floats) of
        the forward, as gpunet's kernels do it."""
        n, c, h, w = self.shape
        if self.op == "conv":
            k, (r, s), (oh, ow) = self.args[1], self.kernel, self.out_hw
            return 2.0 * n * k * oh * ow * c * r * s
        if self.op == "maxpool":  # read x; write y and the argmax
            oh, ow = self.out_hw
            return 4.0 * (n * c * h * w + 2 * n * c * oh * ow)
        return 4.0 * 5 * n * c * h * w  # batch norm: x read three times; y and x_hat written

    def backward_work(self) -> float:
        """The same for the backward: dx and dW, twice the forward's FLOPs; max pooling
        reads dy and the argmax and writes dx; batch norm reads dy and x_hat twice and
        writes dx."""
        return 2 * self.forward_work() if self.op == "conv" else self.forward_work()

    @property
    def kernel(self) -> tuple[int, int]:
        k = self.args[2] if self.op == "conv" else self.args[0]
        return (k, k) if isinstance(k, int) else tuple(k)

    @property
    def stride(self) -> int:
        if self.op == "conv":
            return dict(self.kwargs).get("stride", 1)
        return self.args[1] if len(self.args) > 1 else self.args[0]

    @property
    def padding(self) -> int:
        return dict(self.kwargs).get("padding", 0) if self.op == "conv" else 0

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple((n + 2 * self.padding - f) // self.stride + 1
                     for n, f in zip(self.shape[2:], self.kernel))


def _conv(net, name, n, c, hw, k, f, stride=1, padding=0, gpu_batch=None):
    return Case(net, name, "conv", (n, c, hw, hw), (c, k, f),
                (("stride", stride), ("padding", padding)), gpu_batch)


def _pool(net, name, n, c, hw, f, stride, gpu_batch=None):
    return Case(net, name, "maxpool", (n, c, hw, hw), (f, stride), (), gpu_batch)


def _bn(net, name, n, c, hw, gpu_batch=None):
    return Case(net, name, "batchnorm", (n, c, hw, hw), (c,), (), gpu_batch)


# The one table of layer cases, for gpunet bench, pytest bench/ and make gpu-check.
# CPU batches: the training batches of the two CPU workloads, smaller ones at 224
# pixels so that a CPU run stays within minutes; on the GPU, 32 and 16 there.
LAYER_CASES = [
    _conv("lenet5", "conv1", 128, 1, 32, 6, 5), _conv("lenet5", "conv2", 128, 6, 14, 16, 5),
    _pool("lenet5", "pool1", 128, 6, 28, 2, 2), _bn("lenet5", "bn1", 128, 6, 28),
    _conv("alexnet_cifar", "conv1", 64, 3, 32, 64, 5, padding=2),
    _conv("alexnet_cifar", "conv2", 64, 64, 15, 128, 5, padding=2),
    _conv("alexnet_cifar", "conv4", 64, 192, 7, 192, 3, padding=1),
    _pool("alexnet_cifar", "pool1", 64, 64, 32, 3, 2), _bn("alexnet_cifar", "bn2", 64, 128, 15),
    _conv("alexnet224", "conv1", 16, 3, 224, 64, 11, stride=4, padding=2, gpu_batch=32),
    _conv("alexnet224", "conv2", 16, 64, 27, 192, 5, padding=2, gpu_batch=32),
    _conv("alexnet224", "conv3", 16, 192, 13, 384, 3, padding=1, gpu_batch=32),
    _pool("alexnet224", "pool1", 16, 64, 55, 3, 2, gpu_batch=32),
    _bn("alexnet224", "bn2", 16, 192, 27, gpu_batch=32),
    _conv("vgg16", "conv1_2", 4, 64, 224, 64, 3, padding=1, gpu_batch=16),
    _conv("vgg16", "conv3_2", 4, 256, 56, 256, 3, padding=1, gpu_batch=16),
    _conv("vgg16", "conv5_2", 4, 512, 14, 512, 3, padding=1, gpu_batch=16),
    _pool("vgg16", "pool1", 4, 64, 224, 2, 2, gpu_batch=16),
    _bn("vgg16", "bn3_2", 4, 256, 56, gpu_batch=16),
]
STEP_WORKLOADS = {"lenet5": (models.lenet5, 128, (1, 32, 32)),
                  "alexnet_cifar": (models.alexnet_cifar, 64, (3, 32, 32))}
STEP_CASES = [Case(net, "train_step", "step", (batch, *shape))
              for net, (_, batch, shape) in STEP_WORKLOADS.items()]
CASES = LAYER_CASES + STEP_CASES


def step_flops(net: str, batch: int) -> int:
    """Forward + backward FLOPs of a training step: 3x the forward of every conv and
    linear layer (the first layer needs no input gradient: 2x)."""
    make, _, shape = STEP_WORKLOADS[net]
    flops, first = 0, True
    x = numpy.zeros((1, *shape), numpy.float32)
    # on the CPU whatever the current device: only the shapes matter here
    for layer in make().to("cpu", dtype="float32"):
        y = layer.forward(x)
        if isinstance(layer, nn.Conv2d):
            forward = 2 * batch * layer.weight.data.size * y.shape[2] * y.shape[3]
        elif isinstance(layer, nn.Linear):
            forward = 2 * batch * layer.weight.data.size
        else:
            forward = 0
        if forward:
            flops += (2 if first else 3) * forward
            first = False
        x = y
    return flops


# -- the two implementations of each case ---------------------------------------------------


def _gpunet_layer(case: Case):
    make = {"conv": nn.Conv2d, "maxpool": nn.MaxPool2d, "batchnorm": nn.BatchNorm2d}[case.op]
    return make(*case.args, **dict(case.kwargs))


def torch_twin(model, torch):
    """PyTorch's twin of a gpunet model: the same layers in the same order under the
    same names, holding the same parameters and buffers (float32, on the CPU)."""
    nn_, own, layer = torch.nn, nn, model
    if isinstance(layer, own.Sequential):
        twin = nn_.Sequential()
        for name, child in layer.named_children():
            twin.add_module(name, torch_twin(child, torch))
        return twin
    if isinstance(layer, own.Conv2d):
        twin = nn_.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                          layer.stride, layer.padding, layer.dilation, layer.groups,
                          bias=layer.bias is not None)
    elif isinstance(layer, own.Linear):
        twin = nn_.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, (own.MaxPool2d, own.AvgPool2d)):
        make = nn_.MaxPool2d if isinstance(layer, own.MaxPool2d) else nn_.AvgPool2d
        twin = make(layer.kernel_size, layer.stride, layer.padding)
    elif isinstance(layer, (own.BatchNorm1d, own.BatchNorm2d)):
        make = nn_.BatchNorm1d if isinstance(layer, own.BatchNorm1d) else nn_.BatchNorm2d
        twin = make(layer.num_features, layer.eps, layer.momentum)
    elif isinstance(layer, own.LocalResponseNorm):
        twin = nn_.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
    elif isinstance(layer, own.AdaptiveAvgPool2d):
        twin = nn_.AdaptiveAvgPool2d(layer.output_size)
    elif isinstance(layer, own.Dropout):
        twin = nn_.Dropout(layer.p)
    elif isinstance(layer, own.LeakyReLU):
        twin = nn_.LeakyReLU(layer.slope)
    else:
        simple = {own.ReLU: nn_.ReLU, own.Tanh: nn_.Tanh, own.Sigmoid: nn_.Sigmoid,
                  own.Flatten: nn_.Flatten}
        if type(layer) not in simple:
            raise TypeError(f"torch_twin: no PyTorch twin for {type(layer).__name__}")
        twin = simple[type(layer)]()
    state = {k: torch.from_numpy(numpy.asarray(v, numpy.float32) if v.dtype.kind == "f" else v)
             for k, v in layer.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin


def torch_model(net: str, torch):
    """PyTorch's twin of a fresh ``models.<net>()`` (see :func:`torch_twin`)."""
    make, _, _ = STEP_WORKLOADS[net]
    return torch_twin(make().to("cpu", dtype="float32"), torch)


def _batch(shape, seed=0):
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal(shape, numpy.float32), rng.integers(0, 10, shape[0])


def gpunet_runner(case: Case, device: str = "cpu") -> Callable[[], object]:
    """A function doing the case once on ``device``, synchronised before it returns.
    A layer case returns ``(y, dx)``; its parameters come from ``manual_seed(0)``,
    as :func:`torch_runner`'s, so the two libraries compute the same thing."""
    dev = backend.set_device(device)
    xp = dev.xp
    sync = dev.synchronize
    x, y = _batch(case.shape)
    x = xp.asarray(x)
    if case.op == "step":
        backend.manual_seed(0)
        make, _, _ = STEP_WORKLOADS[case.net]
        model, loss = make(), losses.SoftmaxCrossEntropy()
        opt = optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        y = xp.asarray(y)

        def step():  # as PyTorch's: no check for NaN (fit's step has one)
            train_step(model, loss, opt, x, y, check_finite=False)
            sync()
        return step
    backend.manual_seed(0)
    layer = _gpunet_layer(case)
    dy = xp.ones_like(layer(x))

    def forward_backward():
        y = layer(x)
        dx = layer.backward(dy)
        sync()
        return y, dx
    return forward_backward


def torch_runner(case: Case, torch, device: str = "cpu") -> Callable[[], object]:
    """:func:`gpunet_runner` in PyTorch: the twin of gpunet's layer (same parameters)."""
    tdev = torch.device("cuda" if device.startswith("cuda") else "cpu")
    sync = torch.cuda.synchronize if tdev.type == "cuda" else (lambda: None)
    x, y = (torch.from_numpy(a).to(tdev) for a in _batch(case.shape))
    if case.op == "step":
        torch.manual_seed(0)
        model = torch_model(case.net, torch).to(tdev)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        loss = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad()
            loss(model(x), y).backward()
            opt.step()
            sync()
        return step
    backend.manual_seed(0)
    layer = torch_twin(_gpunet_layer(case), torch).to(tdev)
    x.requires_grad_(True)
    dy = torch.ones_like(layer(x))

    def forward_backward():
        x.grad = None
        y = layer(x)
        y.backward(dy)
        sync()
        return y, x.grad
    return forward_backward


# -- timing -------------------------------------------------------------------------------


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
    torch = _import_torch() if with_torch and torch_unusable(device) is None else None
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


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_unusable(device: str) -> str | None:
    """Why the installed PyTorch cannot run on ``device``, or ``None`` (also when
    PyTorch is missing: its column is then empty). Its CPU build, what ``make test``
    installs, cannot use a GPU ("Torch not compiled with CUDA enabled")."""
    torch = _import_torch()
    if torch is None or not device.startswith("cuda") or torch.cuda.is_available():
        return None
    build = "a CPU build" if torch.version.cuda is None else "no GPU it can use"
    return (f"the PyTorch column is skipped: PyTorch {torch.__version__} is {build} "
            f"(install a CUDA build of PyTorch to compare on {device})")


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
    torch = _import_torch()
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


# -- peak memory ------------------------------------------------------------------------------

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
    libraries = ["gpunet"] + (["torch"] if with_torch and _import_torch()
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
