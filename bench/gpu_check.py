"""``make gpu-check``: everything that needs a GPU, in stages with time budgets,
fitted to a short GPU slot (five minutes in all on one H200), installing nothing.

    PYTHONPATH=. python3 bench/gpu_check.py [--out DIR] [--stage NAME ...] [--data-root DIR]
    python3 bench/gpu_check.py --dry-run --out DIR     # through the CuPy test double

Stages (budget in seconds), each in its own process so that a crash or a hang
costs that stage only; the next one still runs:
  facts      15  GPU, compute capability, versions; device copy GB/s, float32 GEMM TFLOP/s
  smoke      30  every kernel compiled, launched once small, compared with the xp path
  tests      90  the gpu-marked tests, then the rest of the suite (GPUNET_DEVICE=cuda),
                 60 s per test, junit XML in --out
  sanitizer  60  compute-sanitizer memcheck, racecheck, synccheck over bench/sanitize_kernels.py
  training   45  LeNet-5 on Fashion-MNIST, 2 epochs: accuracy, images/s, beside PyTorch+cuDNN;
                 the first 20 losses on CPU and GPU
  timings    60  each kernel vs the xp path and cuDNN, forward and backward; conv2d at
                 TILE_K 8/16; gpunet bench --device cuda --op step

The JSON report is rewritten after every stage, in --out and (on a GPU) in
bench/results/gpu-<date>-<gpu>.json; a rerun of some stages (--stage) updates
that day's report. The last lines printed are a table of the stages.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
DOUBLE = os.path.join(ROOT, "tests", "cupy_double")
# The sanitizer runs Python and CuPy three times under instrumentation: it gets a
# minute; the suite on 16 cores about a minute and a half.
BUDGETS = {"facts": 15, "smoke": 30, "tests": 90, "sanitizer": 60, "training": 45,
           "timings": 60}
# The dry run emulates the kernels on CI's two cores: same stages, looser clocks.
DRY_BUDGET_SCALE = 4


def _stage_budget(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    try:
        value = float(seconds)
    except ValueError:
        value = -1.0
    if name not in BUDGETS or value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected NAME=SECONDS with NAME one of {', '.join(BUDGETS)} and SECONDS > 0, "
            f"got {text!r}")
    return name, value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(
        tempfile.gettempdir(), "gpunet-gpu-check"),
                        help="folder for the report and junit XML (default: $OUT)")
    parser.add_argument("--stage", action="append", choices=list(BUDGETS),
                        help="run only these stages (repeatable)")
    parser.add_argument("--data-root", help="folder holding the Fashion-MNIST IDX files "
                        "(default: $GPUNET_DATA/fashion-mnist, then the usual places)")
    parser.add_argument("--stage-budget", action="append", default=[], metavar="NAME=SECONDS",
                        type=_stage_budget,
                        help="another budget for a stage (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="through the CuPy test double, without the sanitizer")
    parser.add_argument("--run-stage", choices=list(BUDGETS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--facts", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def stage_env(dry: bool) -> dict:
    paths = [DOUBLE] if dry else []
    paths += [ROOT, BENCH, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1")
    if dry:
        env["GPUNET_CUPY_DOUBLE"] = "1"
    return env


def run_stage_here(args) -> None:
    """The child: one stage, its results written to ``--result`` as it goes."""
    sys.path.insert(0, BENCH)
    import gpu_stages
    facts = {}
    if args.facts and os.path.exists(args.facts):
        with open(args.facts) as f:
            facts = json.load(f)
    ctx = gpu_stages.StageContext(dry=args.dry_run, out=args.out, result_path=args.result,
                                  budget_s=args.budget, data_root=args.data_root, facts=facts)
    ctx.emit()
    gpu_stages.STAGES[args.run_stage](ctx)


def preflight(dry: bool) -> tuple[str | None, str, list[str]]:
    """``(fatal problem or None, GPU name, what is missing)``: checked before any stage."""
    if dry:
        sys.path.insert(0, DOUBLE)
        os.environ["GPUNET_CUPY_DOUBLE"] = "1"
    missing = []
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed", "", missing
    sys.path.insert(0, ROOT)
    from gpunet import backend
    reason = backend.cuda_unavailable_reason()
    if reason is not None:
        return f"no usable GPU: {reason}", "", missing
    import cupy
    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    for tool in ("nvcc", "compute-sanitizer"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if importlib.util.find_spec("torch") is None:
        missing.append("PyTorch (no cuDNN columns)")
    else:
        import torch
        if not dry and not torch.cuda.is_available():
            missing.append("PyTorch with CUDA (no cuDNN columns)")
    return None, gpu, missing


def report_paths(out: str, gpu: str, dry: bool) -> list[str]:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
    name = f"gpu-{datetime.date.today()}-{slug}.json"
    paths = [os.path.join(out, name)]
    if not dry:  # the double's figures are not GPU results: never in bench/results
        paths.append(os.path.join(ROOT, "bench", "results", name))
    return paths


def write(report: dict, paths: list[str]) -> None:
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1, default=str)
        os.replace(tmp, path)


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return (done.stdout.strip() or "unknown") + ("+uncommitted" if dirty else "")


def run_stage(name: str, args, budget: float, facts_path: str) -> dict:
    result = os.path.join(args.out, f".stage-{name}.json")
    if os.path.exists(result):
        os.remove(result)
    cmd = [sys.executable, os.path.abspath(__file__), "--run-stage", name, "--result", result,
           "--out", args.out, "--budget", str(budget), "--facts", facts_path]
    cmd += ["--dry-run"] if args.dry_run else []
    cmd += ["--data-root", args.data_root] if args.data_root else []
    print(f"== {name} (budget {budget:.0f} s)", flush=True)
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=stage_env(args.dry_run), timeout=budget,
                              stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
        status = "ok" if done.returncode == 0 else "failed"
        stderr = done.stderr
    except subprocess.TimeoutExpired as exc:
        status = "out of budget"
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    entry = {"status": status, "seconds": round(time.monotonic() - start, 1),
             "budget_s": budget, "results": {}}
    if os.path.exists(result):
        with open(result) as f:
            entry["results"] = json.load(f)
        os.remove(result)
    if status != "ok":
        entry["error"] = stderr[-4000:]
        print(stderr[-2000:], file=sys.stderr, flush=True)
    return entry


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run_stage:
        run_stage_here(args)
        return 0
    os.makedirs(args.out, exist_ok=True)
    args.out = os.path.abspath(args.out)
    fatal, gpu, missing = preflight(args.dry_run)
    print("gpu-check: " + (f"cannot run: {fatal}" if fatal else
                           f"{gpu}; missing: {', '.join(missing) or 'nothing'}"), flush=True)
    if fatal:
        write({"commit": git_commit(), "date": str(datetime.date.today()), "error": fatal},
              [os.path.join(args.out, "gpu-check-not-run.json")])
        return 2
    paths = report_paths(args.out, gpu, args.dry_run)
    report = {}
    if args.stage and os.path.exists(paths[-1]):  # a rerun of some stages updates the report
        with open(paths[-1]) as f:
            report = json.load(f)
    report.update({"commit": git_commit(), "date": str(datetime.date.today()), "gpu": gpu,
                   "dry_run_through_the_cupy_test_double": args.dry_run, "missing": missing})
    report.setdefault("stages", {})
    names = [n for n in BUDGETS if not args.stage or n in args.stage]
    budgets = {n: b * (DRY_BUDGET_SCALE if args.dry_run else 1) for n, b in BUDGETS.items()}
    budgets.update(dict(args.stage_budget))
    facts_path = os.path.join(args.out, ".facts.json")
    with open(facts_path, "w") as f:
        json.dump(report["stages"].get("facts", {}).get("results", {}), f)
    for name in names:
        if name == "sanitizer" and args.dry_run:
            report["stages"][name] = {"status": "skipped", "seconds": 0, "budget_s": 0,
                                      "results": {"why": "the sanitizer needs a real GPU"}}
            continue
        report["stages"][name] = run_stage(name, args, budgets[name], facts_path)
        if name == "facts":
            with open(facts_path, "w") as f:
                json.dump(report["stages"][name]["results"], f)
        write(report, paths)
    write(report, paths)
    os.remove(facts_path)
    print("\nstage      status          seconds  budget")
    for name, entry in report["stages"].items():
        print(f"{name:10s} {entry['status']:15s} {entry['seconds']:7.1f} {entry['budget_s']:7.0f}")
    print("report: " + "  ".join(os.path.relpath(p, ROOT) if p.startswith(ROOT) else p
                                 for p in paths))
    failed = [n for n, e in report["stages"].items() if e["status"] not in ("ok", "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
