"""The stages of ``bench/gpu_check.py``, each run in its own process.

A stage is ``stage_<name>(ctx)``; it records what it has found through
``ctx.emit(results)`` as it goes, so that a stage killed at its budget still
leaves its partial results in the report. ``ctx.dry`` is set when the CuPy test
double stands in for the GPU (``make gpu-check-dry``): shapes and repeat counts
shrink, and nothing it measures is a GPU figure.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


@dataclass
class StageContext:
    dry: bool
    out: str                      # the folder whose files come back from the GPU machine
    result_path: str
    budget_s: float
    data_root: str | None = None
    facts: dict = field(default_factory=dict)  # the facts stage's results, for ratios
    started: float = field(default_factory=time.monotonic)
    results: dict = field(default_factory=dict)

    def emit(self, **values) -> None:
        self.results.update(values)
        tmp = self.result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.results, f, indent=1, default=str)
        os.replace(tmp, self.result_path)

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)


# -- processes and tools -------------------------------------------------------------------
def run_bounded(cmd, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, timeout=timeout, text=True, **kwargs)`` in a process
    group of its own, killed whole at the timeout: a grandchild (the program
    compute-sanitizer runs, pytest's subprocesses) would otherwise live on past the
    budget, on the GPU while the next stage runs."""
    proc = subprocess.Popen(cmd, start_new_session=True, text=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
    except BaseException:  # Ctrl-C: the group no longer gets the terminal's signal
        _kill_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# Where the CUDA toolkit installs itself; its bin/ is often not on a bare machine's PATH
CUDA_HOMES = ("/usr/local/cuda",)


def cuda_tool(name: str) -> str | None:
    """``name`` (nvcc, compute-sanitizer) on PATH, else in ``$CUDA_HOME/bin`` or
    ``/usr/local/cuda/bin``, else ``None``."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), *CUDA_HOMES]
    for folders in [None, *(os.path.join(home, "bin") for home in homes if home)]:
        found = shutil.which(name, path=folders)
        if found is not None:
            return found
    return None


# -- timing ---------------------------------------------------------------------------------
def time_gpu(fn, repeat: int) -> float:
    """Median milliseconds of ``fn`` between CUDA events (after one warm-up call)."""
    import cupy
    fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return float(numpy.median(times))


def time_torch(fn, repeat: int) -> float:
    import torch
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return float(numpy.median(times))


def cuda_torch():
    """PyTorch when it can use the GPU (cuDNN timings), else ``None``."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return torch


# -- facts ----------------------------------------------------------------------------------
def stage_facts(ctx: StageContext) -> None:
    """The GPU, the versions, and two measured ceilings: device-to-device copy GB/s
    and float32 GEMM TFLOP/s (TF32 off: CuPy's default). The ceilings are measured
    and recorded before PyTorch is imported: a cold import of it can take the whole
    budget, and the timings' ``fraction_of_ceiling`` needs them."""
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    ctx.emit(gpu=props["name"].decode(), compute_capability=f"{props['major']}.{props['minor']}",
             memory_gib=round(props["totalGlobalMem"] / 2**30, 1),
             multiprocessors=props["multiProcessorCount"],
             cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
             cuda_driver=cupy.cuda.runtime.driverGetVersion(), cupy=cupy.__version__,
             numpy=numpy.__version__, python=sys.version.split()[0])
    repeat = 2 if ctx.dry else 10
    n = (2**18 if ctx.dry else 2**28) // 4  # float32 values: 1 MiB / 1 GiB
    a, b = cupy.ones(n, numpy.float32), cupy.empty(n, numpy.float32)
    ms = time_gpu(lambda: b.__setitem__(Ellipsis, a), repeat)
    ctx.emit(copy_gbps=float(f"{2 * a.nbytes / (ms * 1e-3) / 1e9:.4g}"))
    size = 256 if ctx.dry else 8192
    m = cupy.ones((size, size), numpy.float32)
    ms = time_gpu(lambda: m @ m, repeat)
    ctx.emit(sgemm_tflops=float(f"{2 * size**3 / (ms * 1e-3) / 1e12:.4g}"))
    nvcc = cuda_tool("nvcc")
    if nvcc is not None:
        done = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
        ctx.emit(nvcc=(done.stdout.strip().splitlines() or [None])[-1])
    else:
        ctx.emit(nvcc=None)
    torch = cuda_torch()
    ctx.emit(torch=None if torch is None else torch.__version__,
             cudnn=None if torch is None else torch.backends.cudnn.version())


# -- smoke: every kernel once against the xp path --------------------------------------------
SMOKE_CASES = {  # small and awkward: odd sizes, stride 2, padding, a tail block
    # each conv kernel launched by one case at least (kernels_not_launched is a failure):
    "conv2d": (2, 13, 7, 6, 100, 3, 3, 2, 1),       # 128x128 forward and weight GEMMs
    "conv2d_wide": (2, 66, 5, 6, 20, 1, 1, 1, 0),   # 64-row forward; 128x128 dx GEMM
    "conv2d_wide_grads": (2, 30, 5, 6, 64, 3, 3, 1, 1),  # 64-row dx and weight GEMMs
    "conv2d_direct": (2, 3, 7, 5, 6, 3, 3, 2, 1),   # few filters and channels: _direct
    "conv2d_tf32": (2, 24, 5, 6, 100, 3, 3, 1, 1),  # TF32 allowed (float32): all 3 GEMMs
    # C R S = 360 on a grid under a wave: the forward's split-K kernels and their reduce
    "conv2d_split": (1, 40, 6, 5, 100, 3, 3, 1, 1),
    "conv2d_wide_split": (1, 40, 6, 5, 30, 3, 3, 1, 1),
    "conv2d_split_tf32": (1, 40, 6, 5, 100, 3, 3, 1, 1),
    "max_pool2d": (2, 3, 7, 7, 3, 2, 1),
    "avg_pool2d": (1, 2, 6, 5, 2, 2, 0),
    "batch_norm": (3, 4, 5, 5),
}


# Each kernel file with the smoke cases that launch its kernels: the smoke stage and
# the sanitizer run one file per process, so that a fault is reported in the
# process of the kernel that made it, not by whatever CUDA call comes next
KERNEL_FILES = {"conv2d": ("conv2d", "conv2d_wide", "conv2d_wide_grads", "conv2d_direct",
                           "conv2d_tf32", "conv2d_split", "conv2d_wide_split",
                           "conv2d_split_tf32"),
                "pool2d": ("max_pool2d", "avg_pool2d"),
                "batchnorm": ("batch_norm",)}


def file_kernels(name: str) -> list[str]:
    """The kernels of ``kernels/<name>.cu``, in the order they are defined."""
    with open(os.path.join(ROOT, "kernels", f"{name}.cu")) as f:
        return re.findall(r'extern\s+"C"\s+__global__\s+void\s+'
                          r'(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)', f.read())


def kernel_names() -> set[str]:
    return {kernel for name in KERNEL_FILES for kernel in file_kernels(name)}


def family_outputs(family: str, dtype: str, use_kernels: bool, rng_seed: int = 0):
    """Forward and backward outputs of one kernel family on a small device input."""
    import cupy

    from gpunet import ops
    rng = numpy.random.default_rng(rng_seed)
    shape = SMOKE_CASES[family]

    def device(*dims):
        return cupy.asarray(rng.standard_normal(dims).astype(dtype))

    if family.startswith("conv2d"):
        n, c, h, w, k, r, s, stride, pad = shape
        x, weight, bias = device(n, c, h, w), device(k, c, r, s), device(k)
        y, ctx = ops.conv2d_forward(x, weight, bias, stride, pad, use_kernels=use_kernels)
        return (y, *ctx.backward(cupy.cos(3 * y + 1)))
    if family == "batch_norm":
        x = device(*shape)
        c = shape[1]
        gamma, beta = device(c), device(c)
        outputs = []
        for training in (True, False):
            mean, var = cupy.zeros(c, dtype), cupy.ones(c, dtype)
            y, ctx = ops.batch_norm_forward(x, gamma, beta, mean, var, training=training,
                                            use_kernels=use_kernels)
            outputs += [y, mean, var, *ctx.backward(cupy.cos(3 * y + 1))]
        return tuple(outputs)
    n, c, h, w, kernel, stride, pad = shape
    x = device(n, c, h, w)
    y, ctx = getattr(ops, f"{family}_forward")(x, kernel, stride, pad, use_kernels=use_kernels)
    return y, ctx.backward(cupy.cos(3 * y + 1))[0]


def _longest_sum(family: str) -> int:
    """The most terms one output of the family's smoke case adds: C R S (forward),
    K R S (input gradient), N OH OW (weight gradient), or a window or channel."""
    shape = SMOKE_CASES[family]
    if family.startswith("conv2d"):
        n, c, h, w, k, r, s, stride, pad = shape
        oh, ow = (h + 2 * pad - r) // stride + 1, (w + 2 * pad - s) // stride + 1
        return max(c * r * s, k * r * s, n * oh * ow)
    return max(math.prod(shape[:1] + shape[2:4]), 9)  # pooling windows, batch-norm channels


def check_family(family: str, dtype: str) -> dict:
    """Kernels against the xp path: the kernels launched, the worst error, or the error."""
    from gpunet.cuda import runtime
    launched = []
    original = runtime.launch

    def recording(name, kernel, *args, **kwargs):
        launched.append(kernel)
        return original(name, kernel, *args, **kwargs)

    row = {"family": family, "dtype": dtype, "shape": SMOKE_CASES[family], "kernels": launched}
    runtime.launch = recording
    tf32 = family.endswith("_tf32") and dtype == "float32"
    try:
        runtime.set_allow_tf32(tf32)
        got = family_outputs(family, dtype, True)
        runtime.set_allow_tf32(False)
        ref = family_outputs(family, dtype, False)
        worst = 0.0
        for g, r in zip(got, ref):
            if g is None:
                continue
            g, r = g.get().astype(numpy.float64), r.get().astype(numpy.float64)
            scale = max(float(numpy.abs(r).max()), 1.0)
            worst = max(worst, float(numpy.abs(g - r).max()) / scale)
        row["max_error"] = worst
        # TF32 rounds each operand to 10 mantissa bits (2^-11 relative): over sums of
        # ~27 terms that cancel, ~6e-3 of the largest output; a wrong fragment layout
        # would be off by O(1). float32: 4 ulp per term of the longest sum (conv2d_wide
        # reduces 66 channels: 1.3e-5 seen), far under any indexing mistake
        bound = 2e-2 if tf32 else 4 * float(numpy.finfo(dtype).eps) * _longest_sum(family)
        row["ok"] = bool(worst <= max(bound, 1e-12))
    except Exception as exc:  # noqa: BLE001 - recorded with the kernel that was running
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000],
                   failing_kernel=launched[-1] if launched else None)
    finally:
        runtime.launch = original
        runtime.set_allow_tf32(False)
    return row


def compile_file(name: str, dtype: str) -> dict:
    """Compile ``kernels/<name>.cu`` for ``dtype`` and load each of its kernels,
    timed. CuPy's RawModule compiles lazily, at the first ``get_function``: making
    one proves nothing, and its compile time would land in the first launch."""
    import cupy

    from gpunet.cuda import runtime
    row = {"file": f"{name}.cu", "dtype": dtype}
    start = time.perf_counter()
    try:
        module = runtime._module(cupy, name, dtype, cupy.cuda.Device().id)
        for kernel in file_kernels(name):
            module.get_function(kernel)
        row.update(ok=True, kernels=len(file_kernels(name)),
                   seconds=round(time.perf_counter() - start, 2))
    except Exception as exc:  # noqa: BLE001 - recorded: NVRTC's log is the message
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:3000])
    return row


def smoke_file(name: str) -> None:
    """One kernel file in this process (the smoke stage's child): compiled in both
    precisions, then its cases checked; one JSON line per row on stdout, as it goes."""
    for dtype in ("float32", "float64"):
        print(json.dumps({"compiled": compile_file(name, dtype)}), flush=True)
    for family in KERNEL_FILES[name]:
        for dtype in ("float32", "float64"):
            print(json.dumps({"check": check_family(family, dtype)}, default=str), flush=True)


def stage_smoke(ctx: StageContext) -> None:
    # CUDA_LAUNCH_BLOCKING: a kernel's fault is raised by its own launch, which
    # check_family records, not by a later call in another kernel's row
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    compiled, checks, processes = [], [], {}
    for name in KERNEL_FILES:
        cmd = [sys.executable, os.path.abspath(__file__), "smoke-file", name]
        timeout = ctx.left_s() - 1
        try:
            done = run_bounded(cmd, timeout, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
            out, err, code = done.stdout, done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:
            out, err, code = exc.stdout or "", exc.stderr or "", None
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        compiled += [row["compiled"] for row in rows if "compiled" in row]
        checks += [row["check"] for row in rows if "check" in row]
        processes[name] = {"exit_code": code}
        if code != 0:
            processes[name]["stderr_tail"] = err[-2000:] if code is not None else \
                f"stopped after {timeout:.0f} s"
            print(f"smoke: {name}.cu: exit {code}\n{err[-2000:]}", file=sys.stderr, flush=True)
        for row in rows:
            row = row.get("check") or row["compiled"]
            if not row["ok"]:
                print(f"smoke: {row}", file=sys.stderr, flush=True)
        ctx.emit(compiled=compiled, checks=checks, processes=processes)
    launched = {k for row in checks for k in row["kernels"]}
    ctx.emit(kernels_not_launched=sorted(kernel_names() - launched))
    if not all(c["ok"] for c in compiled + checks) or kernel_names() - launched or \
            any(p["exit_code"] != 0 for p in processes.values()):
        sys.exit(1)


# -- tests ----------------------------------------------------------------------------------
def junit_counts(path: str) -> dict:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "skipped_for_lack_of_cuda": 0,
              "failures": []}
    if not os.path.exists(path):
        return counts
    for case in ET.parse(path).getroot().iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        name = f"{case.get('classname')}::{case.get('name')}"
        if bad is not None:
            counts["failed"] += 1
            counts["failures"].append(f"{name}: {(bad.get('message') or '')[:300]}")
        elif skipped is not None:
            counts["skipped"] += 1
            counts["skipped_for_lack_of_cuda"] += "no usable GPU" in (skipped.get("message")
                                                                      or "")
        else:
            counts["passed"] += 1
    counts["failures"] = counts["failures"][:40]
    return counts


def stage_tests(ctx: StageContext) -> None:
    """The gpu-marked tests, each under a timeout, junit XML kept in the output
    folder. Only those: the rest of the suite runs on CPU anywhere (make test), and
    would not fit the stage's budget."""
    # PIP_NO_INDEX: a test that would build a wheel fails at once, not after retries,
    # on a machine without network
    env = dict(os.environ, GPUNET_DEVICE="cuda", GPUNET_POISON="1", PIP_NO_INDEX="1",
               PYTHONPATH=os.pathsep.join([BENCH, os.environ.get("PYTHONPATH", "")]))
    # The dry run keeps to the kernel tests: make test already runs every gpu test
    # through the double.
    selection = ["-m", "gpu", "tests/test_kernels.py"] if ctx.dry else ["-m", "gpu"]
    junit = os.path.join(ctx.out, "junit-gpu.xml")
    timeout = ctx.left_s() - 5
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
           "per_test_timeout", "--per-test-timeout", "60", f"--junitxml={junit}", *selection]
    try:
        done = run_bounded(cmd, timeout, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        summary = (done.stdout.strip().splitlines() or [""])[-1]
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
    except subprocess.TimeoutExpired:
        summary, status = "", f"stopped after {timeout:.0f} s"
    ctx.emit(gpu={"status": status, "summary": summary, **junit_counts(junit)})
    if status != "ok" or ctx.results["gpu"]["skipped_for_lack_of_cuda"]:
        sys.exit(1)


# -- sanitizer --------------------------------------------------------------------------------
def stage_sanitizer(ctx: StageContext) -> None:
    """memcheck, racecheck and synccheck over one small launch of each kernel: one
    process per tool and kernel file, launches synchronous, so that a report names
    the kernel that made it."""
    sanitizer = cuda_tool("compute-sanitizer")
    if sanitizer is None:
        ctx.emit(error="compute-sanitizer is neither on PATH nor in "
                       + " or ".join(f"{home}/bin" for home in CUDA_HOMES))
        sys.exit(1)
    script = os.path.join(BENCH, "sanitize_kernels.py")
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    runs = [(tool, name) for tool in ("memcheck", "racecheck", "synccheck")
            for name in KERNEL_FILES]
    bad = False
    for i, (tool, name) in enumerate(runs):
        timeout = ctx.left_s() / (len(runs) - i) - 1
        try:
            done = run_bounded([sanitizer, "--tool", tool, "--error-exitcode", "1",
                                sys.executable, script, name], timeout, cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            summary = re.findall(r"(?:ERROR|RACECHECK) SUMMARY: [^\n]*", done.stdout)
            row = {"exit_code": done.returncode, "summary": summary[-1] if summary else None}
            if done.returncode:
                row["output_tail"] = done.stdout[-3000:]
        except subprocess.TimeoutExpired as exc:
            row = {"exit_code": None, "summary": f"stopped after {timeout:.0f} s",
                   "output_tail": (exc.stdout or "")[-3000:]}
        bad |= row["exit_code"] != 0
        ctx.emit(**{tool: dict(ctx.results.get(tool, {}), **{name: row})})
    if bad:
        sys.exit(1)


# -- training ---------------------------------------------------------------------------------
def _torch_lenet5(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.BatchNorm1d(120), nn.ReLU(), nn.Linear(120, 84),
        nn.BatchNorm1d(84), nn.ReLU(), nn.Linear(84, 10))


def _torch_training(torch, data, epochs, batch) -> dict:
    (x, y), (xt, yt) = data
    torch.manual_seed(0)
    model = _torch_lenet5(torch).cuda()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    xs, ys = torch.from_numpy(x).cuda(), torch.from_numpy(y.astype("int64")).cuda()
    loss_fn = torch.nn.CrossEntropyLoss()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(xs), device="cuda")
        for i in range(0, len(xs), batch):
            idx = order[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xs[idx]), ys[idx]).backward()
            opt.step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(xt[i:i + 1000]).cuda())
                            for i in range(0, len(xt), 1000)])
    accuracy = float((logits.argmax(1).cpu().numpy() == yt).mean())
    return {"test_accuracy": round(accuracy, 4), "seconds": round(seconds, 2),
            "images_per_s": round(epochs * len(x) / seconds)}


def stage_training(ctx: StageContext) -> None:
    """LeNet-5 (batch norm) on Fashion-MNIST: test accuracy and images/s on the GPU
    beside the same model in PyTorch+cuDNN; the first 20 losses on CPU and GPU."""
    import copy

    import gpunet
    from gpunet import losses, models, optim
    from gpunet.data import DatasetError, load_fashion_mnist, transforms
    if ctx.data_root is None:  # without a folder the loader would try a download
        ctx.emit(error="no --data-root: the training stage reads Fashion-MNIST from a folder")
        sys.exit(1)
    try:
        (x, y), (xt, yt) = load_fashion_mnist(ctx.data_root)
    except DatasetError as exc:
        ctx.emit(error=f"Fashion-MNIST not found: {exc}")
        sys.exit(1)
    epochs, batch = (1, 16) if ctx.dry else (2, 128)
    if ctx.dry:
        x, y, xt, yt = x[:384], y[:384], xt[:256], yt[:256]
    x, xt = transforms.to_float(x), transforms.to_float(xt)
    stats = transforms.Standardize().fit(x)
    x, xt = stats(x), stats(xt)
    ctx.emit(train_images=len(x), test_images=len(xt), epochs=epochs, batch_size=batch)

    gpunet.set_device("cpu")
    gpunet.manual_seed(0)
    model = models.lenet5(batch_norm=True)
    steps = 20
    curves = {}
    for device in ("cpu", "cuda"):
        m = copy.deepcopy(model).to(device)
        opt = optim.Adam(m.parameters(), 1e-3)
        loss = losses.SoftmaxCrossEntropy()
        curve = []
        for i in range(steps):
            xb = gpunet.to_device(x[i * batch % len(x):][:batch], device)
            yb = gpunet.to_device(y[i * batch % len(x):][:batch], device)
            opt.zero_grad()
            curve.append(round(loss(m(xb), yb), 7))
            m.backward(loss.backward())
            opt.step()
        curves[device] = curve
    diff = float(numpy.max(numpy.abs(numpy.subtract(curves["cpu"], curves["cuda"]))))
    ctx.emit(first_losses=curves, max_loss_difference=diff)

    gpunet.set_device("cuda")
    gpunet.manual_seed(0)
    model = models.lenet5(batch_norm=True)
    opt = optim.Adam(model.parameters(), 1e-3)
    gpunet.backend.get_device().synchronize()
    start = time.perf_counter()
    gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, (x, y), epochs, batch, progress=False)
    gpunet.backend.get_device().synchronize()
    seconds = time.perf_counter() - start
    accuracy = gpunet.evaluate(model, (xt, yt))["accuracy"]
    ctx.emit(gpunet={"test_accuracy": round(accuracy, 4), "seconds": round(seconds, 2),
                     "images_per_s": round(epochs * len(x) / seconds)})
    torch = cuda_torch()
    ctx.emit(torch_cudnn=_torch_training(torch, ((x, y), (xt, yt)), epochs, batch)
             if torch is not None else "PyTorch with CUDA is not available")
    if diff > 1e-3:
        sys.exit(1)


# -- timings ----------------------------------------------------------------------------------
def _cases(ctx, ids=None) -> list:
    """The layer cases to time: gpunet.benchmarks' table at its GPU batches (those
    of ``ids`` only, if given), or for the dry run, tiny ones (the double runs the
    kernels in an emulator)."""
    from gpunet.benchmarks import LAYER_CASES, Case
    if ctx.dry:
        cases = [Case("tiny", "conv", "conv", (2, 3, 8, 8), (3, 4, 3),
                      (("stride", 1), ("padding", 1))),
                 Case("tiny", "pool", "maxpool", (2, 3, 8, 8), (2, 2)),
                 Case("tiny", "bn", "batchnorm", (2, 3, 4, 4), (3,))]
        return [c for c in cases if ids is None or c.op == "conv"]
    return [c.on_gpu() for c in LAYER_CASES if ids is None or c.id in ids]


TILE_K_CHOICES = (8, 16)  # 32 would overflow 48 KiB of static shared memory


def _row(ctx, op, shape_name, work, unit, ours, xp_path, cudnn):
    rate = lambda ms: float(f"{work / (ms * 1e-3) / 1e9:.4g}")  # noqa: E731
    ceiling = ctx.facts.get("sgemm_tflops", 0) * 1e3 if unit == "gflops" else \
        ctx.facts.get("copy_gbps", 0)
    row = {"op": op, "shape": shape_name, "gpunet_ms": round(ours, 4),
           "xp_path_ms": round(xp_path, 4),
           "cudnn_ms": None if cudnn is None else round(cudnn, 4),
           f"gpunet_{unit}": rate(ours), f"xp_path_{unit}": rate(xp_path),
           f"cudnn_{unit}": None if cudnn is None else rate(cudnn),
           "cudnn_time_over_gpunet": None if cudnn is None else round(cudnn / ours, 3),
           "fraction_of_ceiling": round(rate(ours) / ceiling, 3) if ceiling else None}
    print(row, flush=True)
    return row


def _conv_rows(ctx, case, torch, repeat):
    import cupy

    from gpunet import ops
    rng = numpy.random.default_rng(0)
    (n, c, h, w), (_, k, _), (r, s) = case.shape, case.args, case.kernel
    st, p = case.stride, case.padding
    x = cupy.asarray(rng.standard_normal((n, c, h, w), dtype=numpy.float32))
    wt = cupy.asarray(rng.standard_normal((k, c, r, s), dtype=numpy.float32))
    b = cupy.zeros(k, numpy.float32)

    def forward(kernels):
        return ops.conv2d_forward(x, wt, b, st, p, use_kernels=kernels)

    (y, ctx_kernels), (_, ctx_xp) = forward(True), forward(False)
    dy = cupy.ones_like(y)
    cudnn_f = cudnn_b = None
    if torch is not None:
        tx = torch.randn(n, c, h, w, device="cuda", requires_grad=True)
        tw = torch.randn(k, c, r, s, device="cuda", requires_grad=True)
        tb = torch.zeros(k, device="cuda", requires_grad=True)
        conv = lambda: torch.nn.functional.conv2d(tx, tw, tb, st, p)  # noqa: E731
        tdy = torch.ones_like(conv())
        cudnn_f = time_torch(conv, repeat)
        cudnn_b = time_torch(lambda: torch.autograd.grad(conv(), (tx, tw, tb), tdy),
                             repeat) - cudnn_f
    return [_row(ctx, "conv2d_fwd", case.id, case.forward_work(), "gflops",
                 time_gpu(lambda: forward(True), repeat), time_gpu(lambda: forward(False), repeat),
                 cudnn_f),
            _row(ctx, "conv2d_bwd", case.id, case.backward_work(), "gflops",
                 time_gpu(lambda: ctx_kernels.backward(dy), repeat),
                 time_gpu(lambda: ctx_xp.backward(dy), repeat), cudnn_b)]


def _pool_rows(ctx, case, torch, repeat):
    import cupy

    from gpunet import ops
    (n, c, h, w), kernel, stride = case.shape, case.kernel, case.stride
    x = cupy.asarray(numpy.random.default_rng(0).standard_normal((n, c, h, w),
                                                                 dtype=numpy.float32))
    (y, ctx_k), (_, ctx_xp) = (ops.max_pool2d_forward(x, kernel, stride, use_kernels=k)
                               for k in (True, False))
    dy = cupy.ones_like(y)
    cudnn_f = cudnn_b = None
    if torch is not None:
        tx = torch.randn(n, c, h, w, device="cuda", requires_grad=True)
        pool = lambda: torch.nn.functional.max_pool2d(tx, kernel, stride)  # noqa: E731
        tdy = torch.ones_like(pool())
        cudnn_f = time_torch(pool, repeat)
        cudnn_b = time_torch(lambda: torch.autograd.grad(pool(), tx, tdy), repeat) - cudnn_f
    return [_row(ctx, "max_pool2d_fwd", case.id, case.forward_work(), "gbps",
                 time_gpu(lambda: ops.max_pool2d_forward(x, kernel, stride, use_kernels=True),
                          repeat),
                 time_gpu(lambda: ops.max_pool2d_forward(x, kernel, stride, use_kernels=False),
                          repeat), cudnn_f),
            _row(ctx, "max_pool2d_bwd", case.id, case.backward_work(), "gbps",
                 time_gpu(lambda: ctx_k.backward(dy)[0], repeat),
                 time_gpu(lambda: ctx_xp.backward(dy)[0], repeat), cudnn_b)]


def _batch_norm_rows(ctx, case, torch, repeat):
    import cupy

    from gpunet import ops
    shape = case.shape
    x = cupy.asarray(numpy.random.default_rng(0).standard_normal(shape, dtype=numpy.float32))
    c = shape[1]
    gamma, beta = cupy.ones(c, numpy.float32), cupy.zeros(c, numpy.float32)

    def forward(kernels):
        return ops.batch_norm_forward(x, gamma, beta, cupy.zeros(c, numpy.float32),
                                      cupy.ones(c, numpy.float32), training=True,
                                      use_kernels=kernels)

    (y, ctx_k), (_, ctx_xp) = forward(True), forward(False)
    dy = cupy.ones_like(y)
    cudnn_f = cudnn_b = None
    if torch is not None:
        tx = torch.randn(*shape, device="cuda", requires_grad=True)
        layer = torch.nn.BatchNorm2d(c).cuda()
        tdy = torch.ones_like(layer(tx))
        cudnn_f = time_torch(lambda: layer(tx), repeat)
        cudnn_b = time_torch(lambda: torch.autograd.grad(layer(tx), tx, tdy), repeat) - cudnn_f
    return [_row(ctx, "batch_norm_fwd", case.id, case.forward_work(), "gbps",
                 time_gpu(lambda: forward(True), repeat), time_gpu(lambda: forward(False),
                                                                   repeat), cudnn_f),
            _row(ctx, "batch_norm_bwd", case.id, case.backward_work(), "gbps",
                 time_gpu(lambda: ctx_k.backward(dy), repeat),
                 time_gpu(lambda: ctx_xp.backward(dy), repeat), cudnn_b)]


def _tile_k_rows(ctx, repeat):
    """conv2d with each TILE_K (a compile-time macro): which one a GPU prefers."""
    from gpunet.cuda import runtime
    original = runtime.compile_options
    cases = _cases(ctx, ("lenet5/conv2", "vgg16/conv3_2"))
    rows = []
    try:
        for tile_k in TILE_K_CHOICES:
            runtime.compile_options = lambda dtype, t=tile_k: (*original(dtype), f"-DTILE_K={t}")
            runtime._module.cache_clear()
            for case in cases:
                for row in _conv_rows(ctx, case, None, repeat):
                    rows.append({"tile_k": tile_k, "op": row["op"], "shape": case.id,
                                 "gpunet_ms": row["gpunet_ms"],
                                 "gpunet_gflops": row["gpunet_gflops"]})
    finally:
        runtime.compile_options = original
        runtime._module.cache_clear()
    return rows


def _tf32_rows(ctx, torch, repeat):
    """The convolution with TF32 allowed (ours and cuDNN's tensor cores): opt-in
    speed, beside the float32 rows above."""
    from gpunet.cuda import runtime
    cases = _cases(ctx, ("alexnet224/conv2", "vgg16/conv3_2"))
    rows = []
    runtime.set_allow_tf32(True)
    if torch is not None:
        torch.backends.cudnn.allow_tf32 = True
    try:
        for case in cases:
            for row in _conv_rows(ctx, case, torch, repeat):
                rows.append(dict(row, op=row["op"] + "_tf32"))
    finally:
        runtime.set_allow_tf32(False)
        if torch is not None:
            torch.backends.cudnn.allow_tf32 = False
    return rows


def stage_timings(ctx: StageContext) -> None:
    """Each kernel against the xp path on CuPy and cuDNN (forward and backward),
    the convolution at each TILE_K and with TF32 allowed, then ``gpunet bench
    --device cuda``."""
    torch = None if ctx.dry else cuda_torch()
    repeat = 2 if ctx.dry else 20
    rows = []
    for case in _cases(ctx):
        timer = {"conv": _conv_rows, "maxpool": _pool_rows, "batchnorm": _batch_norm_rows}
        rows += timer[case.op](ctx, case, torch, repeat)
        ctx.emit(kernels=rows)
    ctx.emit(tile_k=_tile_k_rows(ctx, repeat))
    ctx.emit(tf32=_tf32_rows(ctx, torch, repeat))
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
    ctx.emit(train_steps=step)
    if step["exit_code"] != 0:
        sys.exit(1)


STAGES = {"facts": stage_facts, "smoke": stage_smoke, "tests": stage_tests,
          "sanitizer": stage_sanitizer, "training": stage_training, "timings": stage_timings}


if __name__ == "__main__":  # python bench/gpu_stages.py smoke-file conv2d: the smoke child
    if sys.argv[1:2] != ["smoke-file"] or len(sys.argv) != 3 or sys.argv[2] not in KERNEL_FILES:
        sys.exit(f"usage: gpu_stages.py smoke-file {{{','.join(KERNEL_FILES)}}}")
    smoke_file(sys.argv[2])
