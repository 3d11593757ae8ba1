"""``make gpu-check``: everything that needs a GPU, in one run, and a JSON report.

1. The whole test suite with CUDA as the device (nothing may skip for lack of it).
2. ``compute-sanitizer --tool memcheck`` over the kernel tests.
3. Every kernel timed against the xp path on CuPy (``use_kernels=False``) and
   cuDNN (through PyTorch), at LeNet-5, CIFAR-AlexNet, AlexNet-224 and VGG-16
   layer shapes, with GFLOP/s (convolution) or GB/s (pooling, batch norm).
4. ``bench/results/gpu-<date>-<gpu>.json`` with the commit, GPU, CuPy and CUDA
   versions, test counts and the timings.
"""
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONV_SHAPES = {  # name: (N, C, H, W, K, R, S, stride, padding)
    "lenet5.conv1": (128, 1, 32, 32, 6, 5, 5, 1, 0),
    "lenet5.conv2": (128, 6, 14, 14, 16, 5, 5, 1, 0),
    "alexnet_cifar.conv2": (64, 64, 15, 15, 128, 5, 5, 1, 2),
    "alexnet224.conv1": (32, 3, 224, 224, 64, 11, 11, 4, 2),
    "alexnet224.conv2": (32, 64, 27, 27, 192, 5, 5, 1, 2),
    "vgg16.conv3_1": (16, 128, 56, 56, 256, 3, 3, 1, 1),
    "vgg16.conv5_1": (16, 512, 14, 14, 512, 3, 3, 1, 1),
}
POOL_SHAPES = {  # name: (N, C, H, W, kernel, stride)
    "lenet5.pool1": (128, 6, 28, 28, 2, 2),
    "alexnet224.pool1": (32, 64, 55, 55, 3, 2),
    "vgg16.pool2": (16, 128, 112, 112, 2, 2),
}
BN_SHAPES = {"lenet5.bn1": (128, 6, 28, 28), "vgg16.bn3": (16, 256, 56, 56)}


def run(cmd, env=None, timeout=3000):
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, text=True,
                          capture_output=True, timeout=timeout)


def test_counts(junit_path):
    root = ET.parse(junit_path).getroot()
    suites = root.iter("testsuite")
    counts = {"passed": 0, "failed": 0, "skipped": 0, "gpu_tests_run": 0,
              "skipped_for_lack_of_cuda": 0}
    for suite in suites:
        for case in suite.iter("testcase"):
            name = case.get("name", "")
            failed = case.find("failure") is not None or case.find("error") is not None
            skipped = case.find("skipped")
            if failed:
                counts["failed"] += 1
            elif skipped is not None:
                counts["skipped"] += 1
                if "no usable GPU" in (skipped.get("message") or ""):
                    counts["skipped_for_lack_of_cuda"] += 1
            else:
                counts["passed"] += 1
                if "cupy" in name or "gpu" in name:
                    counts["gpu_tests_run"] += 1
    return counts


def time_gpu(fn, repeat=20):
    """Median milliseconds of ``fn`` on the GPU (events around each call)."""
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


def time_torch(fn, repeat=20):
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


def _rate(work, ms):
    return round(work / (ms * 1e-3) / 1e9, 1)


def _row(op, shape_name, work, unit, ours, xp_path, cudnn):
    row = {"op": op, "shape": shape_name, "gpunet_ms": round(ours, 4),
           "xp_path_ms": round(xp_path, 4), "cudnn_ms": None if cudnn is None else round(cudnn, 4),
           f"gpunet_{unit}": _rate(work, ours), f"xp_path_{unit}": _rate(work, xp_path),
           f"cudnn_{unit}": None if cudnn is None else _rate(work, cudnn)}
    print(row, flush=True)
    return row


def _time_conv(name, shape, rng, torch):
    import cupy

    from gpunet import ops
    n, c, h, w, k, r, s, st, p = shape
    x = cupy.asarray(rng.standard_normal((n, c, h, w), dtype=numpy.float32))
    wt = cupy.asarray(rng.standard_normal((k, c, r, s), dtype=numpy.float32))
    b = cupy.zeros(k, numpy.float32)

    def forward(kernels):
        return ops.conv2d_forward(x, wt, b, st, p, use_kernels=kernels)

    (y, ctx_kernels), (_, ctx_xp) = forward(True), forward(False)
    dy = cupy.ones_like(y)
    flops = 2.0 * y.size * c * r * s  # one multiply-add per weight per output
    cudnn_f = cudnn_b = None
    if torch is not None:
        tx = torch.randn(n, c, h, w, device="cuda", requires_grad=True)
        tw = torch.randn(k, c, r, s, device="cuda", requires_grad=True)
        tb = torch.zeros(k, device="cuda", requires_grad=True)

        def conv():
            return torch.nn.functional.conv2d(tx, tw, tb, st, p)

        tdy = torch.ones_like(conv())
        cudnn_f = time_torch(conv)
        cudnn_b = time_torch(lambda: torch.autograd.grad(conv(), (tx, tw, tb), tdy)) - cudnn_f
    return [
        _row("conv2d_fwd", name, flops, "gflops", time_gpu(lambda: forward(True)),
             time_gpu(lambda: forward(False)), cudnn_f),
        _row("conv2d_bwd", name, 2 * flops, "gflops",  # dx and dW: twice the forward
             time_gpu(lambda: ops.conv2d_backward(dy, ctx_kernels)),
             time_gpu(lambda: ops.conv2d_backward(dy, ctx_xp)), cudnn_b)]


def _time_pool(name, shape, rng, torch):
    import cupy

    from gpunet import ops
    n, c, h, w, kernel, stride = shape
    x = cupy.asarray(rng.standard_normal((n, c, h, w), dtype=numpy.float32))
    y, _ = ops.max_pool2d_forward(x, kernel, stride)
    moved = 4.0 * (x.size + 2 * y.size)  # read x, write y and the argmax
    cudnn = None
    if torch is not None:
        tx = torch.randn(n, c, h, w, device="cuda")
        cudnn = time_torch(lambda: torch.nn.functional.max_pool2d(tx, kernel, stride))
    return [_row("max_pool2d_fwd", name, moved, "gbps",
                 time_gpu(lambda: ops.max_pool2d_forward(x, kernel, stride, use_kernels=True)),
                 time_gpu(lambda: ops.max_pool2d_forward(x, kernel, stride, use_kernels=False)),
                 cudnn)]


def _time_batch_norm(name, shape, rng, torch):
    import cupy

    from gpunet import ops
    x = cupy.asarray(rng.standard_normal(shape, dtype=numpy.float32))
    c = shape[1]
    gamma, beta = cupy.ones(c, numpy.float32), cupy.zeros(c, numpy.float32)

    def forward(kernels):
        return ops.batch_norm_forward(x, gamma, beta, cupy.zeros(c, numpy.float32),
                                      cupy.ones(c, numpy.float32), training=True,
                                      use_kernels=kernels)

    moved = 4.0 * 4 * x.size  # x read twice for the statistics, once more; y and x_hat written
    cudnn = None
    if torch is not None:
        tx = torch.randn(*shape, device="cuda")
        layer = torch.nn.BatchNorm2d(c).cuda()
        cudnn = time_torch(lambda: layer(tx))
    return [_row("batch_norm_fwd", name, moved, "gbps", time_gpu(lambda: forward(True)),
                 time_gpu(lambda: forward(False)), cudnn)]


def kernel_timings():
    try:
        import torch
        torch.backends.cudnn.benchmark = True
    except ImportError:
        torch = None
    rng = numpy.random.default_rng(0)
    rows = []
    for table, timer in ((CONV_SHAPES, _time_conv), (POOL_SHAPES, _time_pool),
                         (BN_SHAPES, _time_batch_norm)):
        for name, shape in table.items():
            rows += timer(name, shape, rng, torch)
    return rows


def main():
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
    except Exception as exc:  # noqa: BLE001
        sys.exit(f"gpu-check needs CuPy and a GPU: {exc}")
    gpu = props["name"].decode()
    commit = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
    report = {"commit": commit, "gpu": gpu, "date": str(datetime.date.today()),
              "cupy": cupy.__version__, "cuda": cupy.cuda.runtime.runtimeGetVersion(),
              "driver": cupy.cuda.runtime.driverGetVersion()}

    junit = "/tmp/gpunet-junit.xml"
    suite = run([sys.executable, "-m", "pytest", "-q", f"--junitxml={junit}", "-p",
                 "no:cacheprovider"], env={"GPUNET_DEVICE": "cuda", "GPUNET_POISON": "1"})
    print(suite.stdout[-3000:], suite.stderr[-2000:])
    report["tests"] = test_counts(junit)
    report["tests"]["summary"] = (suite.stdout.strip().splitlines() or [""])[-1]

    sanitizer = shutil.which("compute-sanitizer")
    if sanitizer:
        memcheck = run([sanitizer, "--tool", "memcheck", "--error-exitcode", "1", sys.executable,
                        "-m", "pytest", "-q", "-m", "gpu", "tests/test_kernels.py", "-p",
                        "no:cacheprovider"], env={"GPUNET_DEVICE": "cuda"})
        summary = re.findall(r"ERROR SUMMARY: \d+ errors?", memcheck.stdout + memcheck.stderr)
        report["memcheck"] = {"exit_code": memcheck.returncode,
                              "summary": summary[-1] if summary else "no summary"}
    else:
        report["memcheck"] = {"exit_code": None, "summary": "compute-sanitizer not found"}

    report["timings"] = kernel_timings()
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
    path = os.path.join(ROOT, "bench", "results", f"gpu-{report['date']}-{slug}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"report: {os.path.relpath(path, ROOT)}")
    print(json.dumps(report["tests"]), json.dumps(report["memcheck"]))
    bad = report["tests"]["failed"] or report["tests"]["skipped_for_lack_of_cuda"] or \
        report["memcheck"]["exit_code"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
