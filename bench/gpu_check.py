"""``make gpu-check``: everything that needs a GPU, in stages with time budgets,
fitted to a short GPU slot (six minutes in all on one H200), installing nothing.

    PYTHONPATH=. python3 bench/gpu_check.py [--out DIR] [--stage NAME ...] [--data-root DIR]
                                            [--commit HASH]
    python3 bench/gpu_check.py --dry-run --out DIR     # through the CuPy test double

Stages (budget in seconds), each in its own process so that a crash or a hang
costs that stage only; the next one still runs:
  facts      15  GPU, compute capability, versions; device copy GB/s, float32 GEMM TFLOP/s
                 (measured with CuPy before PyTorch is imported)
  smoke      30  every kernel compiled (each one loaded, and timed), launched once small,
                 compared with the xp path: one process per kernel file, CUDA_LAUNCH_BLOCKING=1
  tests      90  the gpu-marked tests (GPUNET_DEVICE=cuda), 60 s per test, junit XML in
                 --out; skipped when pytest or hypothesis is missing
  sanitizer 120  compute-sanitizer memcheck, racecheck, synccheck over bench/sanitize_kernels.py,
                 one process per tool and kernel file, CUDA_LAUNCH_BLOCKING=1, no memory pool
  training   45  LeNet-5 on Fashion-MNIST, 2 epochs: accuracy, images/s, beside PyTorch+cuDNN;
                 the first 20 losses on CPU and GPU; skipped unless --data-root or
                 $GPUNET_DATA/fashion-mnist holds the files (it never downloads)
  timings    60  every kernel path the launchers choose (direct, wide and 128x128 GEMMs,
                 split-K, TF32, max and average pooling, batch norm) on the LAYER_CASES
                 shapes vs the xp path and cuDNN, forward and backward, each row with the
                 kernels it launched; GEMMs at TILE_K 8/16; gpunet bench --op step

The JSON report is rewritten after every stage, in --out and (on a GPU) in
bench/results/gpu-<date>-<gpu>.json; a rerun of some stages (--stage) updates
the newest report of that GPU in --out (the folder that comes back from a GPU
machine), else that day's in bench/results. The last lines printed are a table
of the stages. Nothing here needs git, nvcc or network.
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

import gpu_stages  # the package beside this script, hence first on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
DOUBLE = os.path.join(ROOT, "tests", "cupy_double")
# The sanitizer runs Python and CuPy twelve times under instrumentation (three tools,
# four kernel files): two minutes, an estimated eight seconds a run and the rest for a
# slow one; the suite on 16 cores about a minute and a half.
BUDGETS = {"facts": 15, "smoke": 30, "tests": 90, "sanitizer": 120, "training": 45,
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
    parser.add_argument("--commit", help="the commit under test, for the report (default: "
                        "git's answer, else read from .git, else 'unknown')")
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
        if gpu_stages.cuda_tool(tool) is None:
            missing.append(tool)
    missing += [f"{name} (no tests stage)" for name in tests_missing()]
    if importlib.util.find_spec("torch") is None:
        missing.append("PyTorch (no cuDNN columns)")
    else:
        import torch
        if not dry and not torch.cuda.is_available():
            missing.append("PyTorch with CUDA (no cuDNN columns)")
    return None, gpu, missing


def tests_missing() -> list[str]:
    """What pytest needs to collect the suite (tests/conftest.py imports hypothesis)."""
    return [name for name in ("pytest", "hypothesis") if importlib.util.find_spec(name) is None]


def fashion_mnist_root(data_root: str | None) -> str | None:
    """The folder holding the four Fashion-MNIST files: ``--data-root``, else
    ``$GPUNET_DATA/fashion-mnist`` (or ``$GPUNET_DATA``), else ``None``. Only these:
    elsewhere the loader would try a download, which a GPU machine without network
    turns into a wait."""
    from gpunet import config
    from gpunet.data.datasets import FASHION_MNIST
    data = config.get("data")
    folders = [data_root] if data_root else \
        [os.path.join(data, "fashion-mnist"), data] if data else []
    for folder in folders:
        if all(os.path.isfile(os.path.join(folder, r.filename)) or
               os.path.isfile(os.path.join(folder, r.filename + ".gz"))
               for r in FASHION_MNIST.resources):
            return os.path.abspath(folder)
    return None


def skip_reasons(args) -> dict[str, str]:
    """The stages that cannot run here, each with one line saying why."""
    reasons = {}
    if tests_missing():
        reasons["tests"] = (f"{' and '.join(tests_missing())} not installed (python3 -m pip "
                            "install pytest hypothesis)")
    if args.data_root_found is None:
        reasons["training"] = ("no Fashion-MNIST files in "
                               + (args.data_root or "$GPUNET_DATA/fashion-mnist")
                               + " (set GPUNET_DATA or --data-root)")
    if args.dry_run:
        reasons["sanitizer"] = "the sanitizer needs a real GPU"
    return reasons


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


def previous_report(out: str, gpu: str, paths: list[str]) -> dict:
    """The report a rerun of some stages updates: the newest of this GPU in ``out``
    (what came back from the GPU machine, whatever its date), else that day's in
    bench/results."""
    slug = os.path.basename(paths[0])[len("gpu-0000-00-00-"):]
    found = sorted(name for name in os.listdir(out)
                   if name.startswith("gpu-") and name.endswith(slug)
                   and re.fullmatch(r"gpu-\d{4}-\d\d-\d\d-", name[:len("gpu-0000-00-00-")]))
    for path in [os.path.join(out, name) for name in found[-1:]] + paths[1:]:
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    return {}


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def commit_from_git_files(root: str = ROOT) -> str | None:
    """HEAD's commit read from the ``.git`` files, for a machine without git: a
    worktree's ``.git`` file names its folder, whose ``commondir`` holds the refs;
    a ref is a loose file or a line of ``packed-refs``."""
    gitdir = os.path.join(root, ".git")
    try:
        if os.path.isfile(gitdir):
            text = _read(gitdir)
            if not text.startswith("gitdir:"):
                return None
            gitdir = os.path.join(root, text[len("gitdir:"):].strip())
        common = gitdir
        if os.path.isfile(os.path.join(gitdir, "commondir")):
            common = os.path.join(gitdir, _read(os.path.join(gitdir, "commondir")))
        head = _read(os.path.join(gitdir, "HEAD"))
        if not head.startswith("ref:"):
            return head[:12] or None
        ref = head[len("ref:"):].strip()
        for folder in (gitdir, common):
            if os.path.isfile(os.path.join(folder, ref)):
                return _read(os.path.join(folder, ref))[:12]
        packed = os.path.join(common, "packed-refs")
        if os.path.isfile(packed):
            for line in _read(packed).splitlines():
                sha, _, name = line.partition(" ")
                if name == ref:
                    return sha[:12]
    except OSError:
        return None
    return None


def git_commit(given: str | None = None, root: str = ROOT) -> str:
    """The commit under test: ``--commit``, else git's answer (with ``+uncommitted``
    for a changed tree), else the ``.git`` files (changes then unchecked), else
    ``unknown``."""
    if given:
        return given
    git = shutil.which("git")
    if git is not None:
        done = subprocess.run([git, "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip():
            dirty = subprocess.run([git, "status", "--porcelain", "--untracked-files=no"],
                                   cwd=root, capture_output=True, text=True).stdout.strip()
            return done.stdout.strip() + ("+uncommitted" if dirty else "")
    return commit_from_git_files(root) or "unknown"


def run_stage(name: str, args, budget: float, facts_path: str) -> dict:
    result = os.path.join(args.out, f".stage-{name}.json")
    if os.path.exists(result):
        os.remove(result)
    cmd = [sys.executable, os.path.abspath(__file__), "--run-stage", name, "--result", result,
           "--out", args.out, "--budget", str(budget), "--facts", facts_path]
    cmd += ["--dry-run"] if args.dry_run else []
    cmd += ["--data-root", args.data_root_found] if args.data_root_found else []
    print(f"== {name} (budget {budget:.0f} s)", flush=True)
    start = time.monotonic()
    try:
        done = gpu_stages.run_bounded(cmd, budget, cwd=ROOT, env=stage_env(args.dry_run),
                                      stdout=sys.stdout, stderr=subprocess.PIPE)
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
    commit = git_commit(args.commit)
    if fatal:
        write({"commit": commit, "date": str(datetime.date.today()), "error": fatal},
              [os.path.join(args.out, "gpu-check-not-run.json")])
        return 2
    args.data_root_found = fashion_mnist_root(args.data_root)
    skipped = skip_reasons(args)
    paths = report_paths(args.out, gpu, args.dry_run)
    report = previous_report(args.out, gpu, paths) if args.stage else {}
    report.update({"commit": commit, "date": str(datetime.date.today()), "gpu": gpu,
                   "dry_run_through_the_cupy_test_double": args.dry_run, "missing": missing})
    report.setdefault("stages", {})
    names = [n for n in BUDGETS if not args.stage or n in args.stage]
    budgets = {n: b * (DRY_BUDGET_SCALE if args.dry_run else 1) for n, b in BUDGETS.items()}
    budgets.update(dict(args.stage_budget))
    facts_path = os.path.join(args.out, ".facts.json")
    with open(facts_path, "w") as f:
        json.dump(report["stages"].get("facts", {}).get("results", {}), f)
    for name in names:
        if name in skipped:
            print(f"== {name}: skipped: {skipped[name]}", flush=True)
            report["stages"][name] = {"status": "skipped", "seconds": 0, "budget_s": 0,
                                      "results": {"why": skipped[name]}}
            write(report, paths)
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
