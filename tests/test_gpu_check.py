"""bench/gpu_check.py, the script a short GPU slot runs: it must never be what
fails there. Its dry run goes through the CuPy test double (make gpu-check-dry
runs every stage; here, what happens when a stage runs out of its budget, and
what a bare GPU machine lacks: git, nvcc and compute-sanitizer on PATH, pytest,
hypothesis, the data, time for a cold PyTorch import)."""
import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
SCRIPT = os.path.join(BENCH, "gpu_check.py")
DOUBLE = os.path.join(ROOT, "tests", "cupy_double")
DOUBLE_SLUG = "cupy-test-double-numpy-on-the-cpu-not-a-gpu"
needs_cupy = pytest.mark.skipif(importlib.util.find_spec("cupy") is None,
                                reason="the CuPy test double reads the real CuPy")


def bare_env(tmp_path, *pythonpath, **extra):
    """The environment of a bare GPU machine: PATH holds neither git nor nvcc nor
    compute-sanitizer, and no CUDA folder is named."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GPUNET_CUPY_DOUBLE", "GPUNET_DATA", "CUDA_HOME", "CUDA_PATH")}
    env["PATH"] = bare_path(tmp_path / "bare-bin")
    env["PYTHONPATH"] = os.pathsep.join(map(str, [*pythonpath, ROOT]))
    env.update(extra)
    return env


def bare_path(folder) -> str:
    """A folder of links to what PATH holds (g++ for the CUDA emulator, sh, ...),
    less git and the CUDA tools."""
    if not folder.exists():
        folder.mkdir()
        for entry in filter(None, os.environ.get("PATH", "").split(os.pathsep)):
            if not os.path.isdir(entry) or os.path.abspath(entry).startswith("/usr/local/cuda"):
                continue
            for name in os.listdir(entry):
                if name not in ("git", "nvcc", "compute-sanitizer") and \
                        not (folder / name).exists():
                    (folder / name).symlink_to(os.path.join(entry, name))
    return str(folder)


def run_check(*args, env=None):
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "GPUNET_CUPY_DOUBLE"}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def import_bench(name):
    """bench/<name>.py, imported as gpu_check imports gpu_stages (beside it)."""
    sys.path.insert(0, BENCH)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(BENCH)


def dry_report(out):
    (path,) = out.glob(f"gpu-{datetime.date.today()}-{DOUBLE_SLUG}.json")
    return json.loads(path.read_text())


@needs_cupy
def test_a_stage_out_of_budget_is_recorded_and_the_next_stage_still_runs(tmp_path):
    done = run_check("--dry-run", "--out", str(tmp_path), "--stage", "smoke", "--stage",
                     "facts", "--stage-budget", "smoke=0.05")
    assert done.returncode == 1, done.stdout + done.stderr
    (path,) = tmp_path.glob("gpu-*-cupy-test-double-*.json")
    report = json.loads(path.read_text())
    assert report["dry_run_through_the_cupy_test_double"] is True
    stages = report["stages"]
    assert list(stages) == ["facts", "smoke"]  # in the script's order, whatever was asked
    assert stages["smoke"]["status"] == "out of budget"
    assert stages["facts"]["status"] == "ok"
    assert "CuPy test double" in stages["facts"]["results"]["gpu"]
    assert stages["facts"]["results"]["sgemm_tflops"] > 0
    table = done.stdout.strip().splitlines()
    assert table[-1].startswith("report:") and "smoke      out of budget" in done.stdout
    results = os.path.join(ROOT, "bench", "results")
    assert not [f for f in os.listdir(results) if "test-double" in f]  # never beside GPU runs


def test_without_a_gpu_it_says_why_in_one_line_and_writes_so(tmp_path):
    if importlib.util.find_spec("cupy") is not None:
        from gpunet import backend
        if backend.cuda_unavailable_reason() is None:
            pytest.skip("a GPU is here")
    done = run_check("--out", str(tmp_path))
    assert done.returncode == 2
    assert done.stdout.splitlines()[0].startswith("gpu-check: cannot run: ")
    report = json.loads((tmp_path / "gpu-check-not-run.json").read_text())
    assert report["error"] and report["commit"]


@pytest.mark.parametrize("bad", ["smoke", "nope=3", "smoke=-1"])
def test_stage_budget_must_name_a_stage_and_a_time(tmp_path, bad):
    done = run_check("--dry-run", "--out", str(tmp_path), "--stage-budget", bad)
    assert done.returncode == 2 and "expected NAME=SECONDS" in done.stderr
    assert not list(tmp_path.iterdir())  # refused before anything ran


# A stand-in compute-sanitizer: it runs the program in its own process as the real
# one would (recording what the sanitized process was given), then prints the real
# one's summary line
FAKE_SANITIZER = """#!{python}
import json, os, runpy, sys
args = sys.argv[1:]
tool = args[args.index("--tool") + 1]
program = args[args.index("--error-exitcode") + 2:]
import cupy
allocators = []
real = getattr(cupy.cuda, "set_allocator", None)
def set_allocator(allocator=None):
    allocators.append(repr(allocator))
    real(allocator)
cupy.cuda.set_allocator = set_allocator
sys.argv = program[1:]
try:
    runpy.run_path(program[1], run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code
with open(os.environ["SANITIZER_LOG"], "a") as f:
    f.write(json.dumps({{"tool": tool, "program": program, "allocators": allocators,
                        "blocking": os.environ.get("CUDA_LAUNCH_BLOCKING")}}) + "\\n")
print("========= RACECHECK SUMMARY: 0 hazards displayed" if tool == "racecheck" else
      "========= ERROR SUMMARY: 0 errors")
sys.exit(1 if code else 0)
"""


def run_sanitizer_stage(tmp_path, sanitizer_text, budget, **extra):
    """The sanitizer stage alone through the double, compute-sanitizer only in
    ``$CUDA_HOME/bin`` (as in /usr/local/cuda/bin on a GPU machine), not on PATH."""
    fake = tmp_path / "cuda" / "bin" / "compute-sanitizer"
    fake.parent.mkdir(parents=True)
    fake.write_text(sanitizer_text)
    fake.chmod(0o755)
    result = tmp_path / "stage.json"
    env = bare_env(tmp_path, DOUBLE, ROOT, BENCH, GPUNET_CUPY_DOUBLE="1",
                   CUDA_HOME=str(tmp_path / "cuda"), **extra)
    start = time.monotonic()
    done = subprocess.run([sys.executable, SCRIPT, "--run-stage", "sanitizer", "--result",
                           str(result), "--out", str(tmp_path), "--budget", str(budget),
                           "--dry-run"], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=budget + 60)
    return done, json.loads(result.read_text()), time.monotonic() - start


@needs_cupy
def test_the_sanitizer_runs_each_tool_on_each_kernel_file_alone_without_the_pool(tmp_path):
    """The one stage the dry run skips: compute-sanitizer found in the CUDA folder
    when PATH lacks it; each tool run once per kernel file, with synchronous
    launches and CuPy's memory pool off in the sanitized process."""
    log = tmp_path / "sanitizer.log"
    done, rows, _ = run_sanitizer_stage(tmp_path, FAKE_SANITIZER.format(python=sys.executable),
                                        240, SANITIZER_LOG=str(log))
    assert done.returncode == 0, (rows, done.stderr[-3000:])
    files = {"conv2d", "pool2d", "batchnorm", "optim"}
    assert set(rows) == {"memcheck", "racecheck", "synccheck"}
    for tool in rows:
        assert set(rows[tool]) == files
    assert rows["memcheck"]["pool2d"] == {"exit_code": 0, "summary": "ERROR SUMMARY: 0 errors"}
    assert rows["racecheck"]["conv2d"]["summary"].startswith("RACECHECK SUMMARY: 0 hazards")
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((r["tool"], r["program"][-1]) for r in runs) == sorted(
        (tool, name) for tool in rows for name in files)
    for run in runs:
        assert run["blocking"] == "1", run
        assert run["allocators"] == ["None"], run  # cudaMalloc per array, no pool


def test_a_slow_sanitizer_run_borrows_what_the_later_runs_do_not_need():
    """The first conv2d run compiles its kernels when nothing is cached (30 s and
    more on CI's two cores through the double): an even share of the budget (19 s
    of 240 for 12 runs) stopped it while the other eleven runs took a second each."""
    sanitizer = import_bench("gpu_stages.sanitizer")
    floor = sanitizer.RUN_FLOOR_S
    assert sanitizer.run_timeout(240, 12) == pytest.approx(239 - 11 * floor)
    assert sanitizer.run_timeout(240, 12) > 100
    # the last run gets everything left but the second kept for the stage's rows
    assert sanitizer.run_timeout(50, 1) == pytest.approx(49)
    # a budget too short for floors is shared evenly, never overdrawn
    for left, runs in ((6, 12), (60, 12), (20, 3)):
        assert 0 < sanitizer.run_timeout(left, runs) * runs <= left - 1 + 1e-9
    # the worst case, each run taking all it may: the first takes the slack, and every
    # later one still gets its floor (the last its floor and the stage's second)
    left, timeouts = 240.0, []
    for runs_left in range(12, 0, -1):
        timeouts.append(sanitizer.run_timeout(left, runs_left))
        left -= timeouts[-1]
    assert timeouts[0] == pytest.approx(239 - 11 * floor)
    assert timeouts[1:] == pytest.approx([floor] * 11)
    assert left == pytest.approx(1)
    # with only the stage's second left, or less, no run is started
    for left in (1.0, 0.4, -3.0):
        assert sanitizer.run_timeout(left, 3) == 0


def test_a_sanitizer_run_with_under_a_second_left_is_not_started(tmp_path, monkeypatch):
    """A run given a fraction of a second cannot start its Python: its row says it was
    not run and why (it was started, killed at once and shown "stopped after -0 s")."""
    sanitizer = import_bench("gpu_stages.sanitizer")
    common = import_bench("gpu_stages.common")
    monkeypatch.setattr(sanitizer, "cuda_tool", lambda name: "/bin/false")
    started = []
    monkeypatch.setattr(sanitizer, "_sanitize", lambda *args: started.append(args) or
                        {"exit_code": 0, "summary": "ERROR SUMMARY: 0 errors"})
    ctx = common.StageContext(dry=True, out=str(tmp_path), result_path=str(tmp_path / "r.json"),
                              budget_s=13.0)
    lefts = iter([20.0] + [1.5] * 11)  # the first run takes all but 1.5 s
    monkeypatch.setattr(ctx, "left_s", lambda: next(lefts))
    with pytest.raises(SystemExit) as info:
        sanitizer.stage_sanitizer(ctx)
    assert info.value.code == 1
    assert len(started) == 1 and started[0][3] >= sanitizer.MIN_RUN_S
    rows = [row for tool in ("memcheck", "racecheck", "synccheck")
            for row in ctx.results[tool].values()]
    assert len(rows) == 12 and rows[0]["exit_code"] == 0
    for row in rows[1:]:
        assert row["exit_code"] is None
        assert re.fullmatch(r"not run: 0\.\d s of the stage's budget was left for it",
                            row["summary"]), row


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@needs_cupy
def test_the_sanitizer_is_stopped_at_its_budget_with_what_it_started(tmp_path):
    """A sanitized program that hangs, and has started one of its own: both are
    killed at the budget (a survivor holding the pipe would keep the stage waiting)."""
    pids = tmp_path / "pids"
    hanging = (f"#!/bin/sh\n/bin/sleep 120 &\necho $! >> {pids}\n"
               f"/bin/sleep 120\n")
    done, rows, seconds = run_sanitizer_stage(tmp_path, hanging, 14)
    assert seconds < 30, done.stderr[-3000:]
    assert done.returncode == 1
    assert rows["memcheck"]["conv2d"]["exit_code"] is None
    assert rows["memcheck"]["conv2d"]["summary"].startswith("stopped after")
    # runs the budget had no time for say so, rather than "stopped after -0 s"
    summaries = [row["summary"] for tool in rows.values() for row in tool.values()]
    assert len(summaries) == 12
    for summary in summaries:
        assert summary.startswith("not run: ") or \
            float(re.fullmatch(r"stopped after (\S+) s", summary)[1]) > 0, summaries
    started = pids.read_text().split()
    assert started
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in started if alive(pid)]


# -- a bare GPU machine -----------------------------------------------------------------
def head_commit():
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


@needs_cupy
@pytest.mark.skipif(shutil.which("git") is None, reason="git tells the test what HEAD is")
def test_without_git_the_commit_is_read_from_dot_git_or_given(tmp_path):
    env = bare_env(tmp_path)
    done = run_check("--dry-run", "--out", str(tmp_path / "a"), "--stage", "sanitizer",
                     env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    commit = dry_report(tmp_path / "a")["commit"]
    assert len(commit) >= 7 and head_commit().startswith(commit)
    done = run_check("--dry-run", "--out", str(tmp_path / "b"), "--stage", "sanitizer",
                     "--commit", "abc1234", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert dry_report(tmp_path / "b")["commit"] == "abc1234"


def test_the_commit_is_read_from_a_worktree_and_packed_refs(tmp_path, monkeypatch):
    """The layouts a copied tree may hold: ``.git`` a file naming a worktree's
    folder, the refs in the main folder (``commondir``), loose or packed; a
    detached HEAD; no ``.git`` at all."""
    gpu_check = import_bench("gpu_check")
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    main, tree = tmp_path / "main" / ".git", tmp_path / "tree"
    worktree = main / "worktrees" / "tree"
    worktree.mkdir(parents=True)
    tree.mkdir()
    (tree / ".git").write_text(f"gitdir: {worktree}\n")
    (worktree / "commondir").write_text("../..\n")
    (worktree / "HEAD").write_text("ref: refs/heads/topic\n")
    (main / "packed-refs").write_text("# pack-refs with: peeled fully-peeled sorted\n"
                                      f"{'a' * 40} refs/heads/main\n"
                                      f"{'b' * 40} refs/heads/topic\n")
    assert gpu_check.git_commit(root=str(tree)) == "b" * 12
    (main / "refs" / "heads").mkdir(parents=True)
    (main / "refs" / "heads" / "topic").write_text("c" * 40 + "\n")  # loose wins
    assert gpu_check.git_commit(root=str(tree)) == "c" * 12
    (worktree / "HEAD").write_text("d" * 40 + "\n")
    assert gpu_check.git_commit(root=str(tree)) == "d" * 12
    assert gpu_check.git_commit(root=str(tmp_path)) == "unknown"
    assert gpu_check.git_commit("1234abc", root=str(tmp_path)) == "1234abc"


HIDE_MODULES = """import sys
for name in {names!r}:
    sys.modules[name] = None  # find_spec says None, import raises: as if not installed
"""


@needs_cupy
def test_without_pytest_or_hypothesis_the_tests_stage_is_skipped_saying_so(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_MODULES.format(names=["hypothesis"]))
    done = run_check("--dry-run", "--out", str(tmp_path), "--stage", "tests",
                     env=bare_env(tmp_path, site))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    first, *rest = done.stdout.splitlines()
    assert "hypothesis (no tests stage)" in first
    assert [line for line in rest if line.startswith("== tests: skipped: hypothesis")]
    stage = dry_report(tmp_path)["stages"]["tests"]
    assert stage["status"] == "skipped" and "hypothesis" in stage["results"]["why"]
    assert not list(tmp_path.glob("junit-*.xml"))


class FakePopen:
    """Records each command; answers as a pytest run that passed."""
    commands = []

    def __init__(self, cmd, *args, **kwargs):
        self.commands.append(list(cmd))
        self.args, self.pid, self.returncode = cmd, 2**22 + 1, None
        self.stdout = self.stderr = self.stdin = None

    def communicate(self, input=None, timeout=None):
        self.returncode = 0
        return "3 passed in 0.1s\n", ""

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        return self.returncode

    def kill(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_on_a_gpu_the_tests_stage_runs_only_the_gpu_marked_tests(tmp_path, monkeypatch):
    """The rest of the suite runs on CPU anywhere, and cannot fit in 90 s."""
    gpu_stages = import_bench("gpu_stages")
    FakePopen.commands = []
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    ctx = gpu_stages.StageContext(dry=False, out=str(tmp_path),
                                  result_path=str(tmp_path / "stage.json"), budget_s=90)
    gpu_stages.stage_tests(ctx)
    (cmd,) = [c for c in FakePopen.commands if "pytest" in c]
    assert [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-m"] == ["pytest", "gpu"]
    assert not [arg for arg in cmd if "not gpu" in arg]


SLOW_TORCH = """import os, time
open(os.environ["TORCH_IMPORT_MARK"], "w").close()
time.sleep(120)  # a cold import from a slow disk
"""


@needs_cupy
def test_the_facts_stage_records_the_ceilings_before_importing_pytorch(tmp_path):
    (tmp_path / "site" / "torch").mkdir(parents=True)
    (tmp_path / "site" / "torch" / "__init__.py").write_text(SLOW_TORCH)
    mark, result = tmp_path / "torch-import-began", tmp_path / "stage.json"
    env = bare_env(tmp_path, tmp_path / "site", DOUBLE, ROOT, BENCH, GPUNET_CUPY_DOUBLE="1",
                   TORCH_IMPORT_MARK=str(mark))
    proc = subprocess.Popen([sys.executable, SCRIPT, "--run-stage", "facts", "--result",
                             str(result), "--out", str(tmp_path), "--budget", "15",
                             "--dry-run"], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mark.exists(), proc.stderr.read().decode()[-3000:] if proc.poll() else ""
        facts = json.loads(result.read_text())  # what a kill at the budget would leave
    finally:
        proc.kill()
        proc.wait()
    assert facts["copy_gbps"] > 0 and facts["sgemm_tflops"] > 0
    assert "CuPy test double" in facts["gpu"]


# Through the double, CuPy's laziness: RawModule compiles at the first
# get_function, and pool2d.cu does not compile. Each get_function is logged with
# its process and CUDA_LAUNCH_BLOCKING.
LAZY_RAWMODULE = """import json, os
if os.environ.get("GPUNET_CUPY_DOUBLE") == "1":
    import cupy
    if getattr(cupy, "IS_TEST_DOUBLE", False):
        from cupy import _raw
        class LazyModule:
            def __init__(self, code, options):
                self.code, self.options, self.module = code, options, None
            def get_function(self, name):
                with open(os.environ["KERNEL_LOG"], "a") as f:
                    f.write(json.dumps({"pid": os.getpid(), "kernel": name,
                                        "blocking": os.environ.get("CUDA_LAUNCH_BLOCKING")})
                            + "\\n")
                if self.module is None:
                    if "max_pool2d_fwd" in self.code:
                        raise _raw.CompileException("pool2d.cu(1): error: lazily refused")
                    self.module = _raw.RawModule(self.code, tuple(self.options))
                return self.module.get_function(name)
        cupy.RawModule = lambda code=None, *, options=(), **kw: LazyModule(code, options)
"""


@pytest.fixture(scope="module")
def lazy_smoke(tmp_path_factory):
    """One dry smoke stage under LAZY_RAWMODULE: (its report, the kernel log)."""
    tmp = tmp_path_factory.mktemp("lazy-smoke")
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(LAZY_RAWMODULE)
    log = tmp / "kernels.log"
    done = run_check("--dry-run", "--out", str(tmp), "--stage", "smoke",
                     env=bare_env(tmp, tmp / "site", KERNEL_LOG=str(log)))
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return dry_report(tmp)["stages"]["smoke"], rows


@needs_cupy
def test_smoke_compiles_each_kernel_file_before_saying_it_compiled(lazy_smoke):
    stage, _ = lazy_smoke
    assert stage["status"] == "failed"
    compiled = {(row["file"], row["dtype"]): row for row in stage["results"]["compiled"]}
    assert len(compiled) == 8
    for dtype in ("float32", "float64"):
        assert not compiled["pool2d.cu", dtype]["ok"]
        assert "lazily refused" in compiled["pool2d.cu", dtype]["error"]
        for name in ("conv2d.cu", "batchnorm.cu", "optim.cu"):
            assert compiled[name, dtype]["ok"] and compiled[name, dtype]["seconds"] >= 0


@needs_cupy
def test_smoke_runs_each_kernel_file_in_its_own_process_with_blocking_launches(lazy_smoke):
    """So that a fault is raised by the launch that made it, and a context it
    poisons costs one file's checks only."""
    stage, rows = lazy_smoke
    gpu_stages = import_bench("gpu_stages")
    file_of = {k: name for name in gpu_stages.KERNEL_FILES for k in gpu_stages.file_kernels(name)}
    files_by_pid = {}
    for row in rows:
        assert row["blocking"] == "1", row
        files_by_pid.setdefault(row["pid"], set()).add(file_of[row["kernel"]])
    assert sorted(f for files in files_by_pid.values() for f in files) == \
        ["batchnorm", "conv2d", "optim", "pool2d"]
    assert stage["results"]["processes"]["conv2d"] == {"exit_code": 0}
    checks = [c for c in stage["results"]["checks"] if c["family"] == "batch_norm"]
    assert checks and all(c["ok"] for c in checks)  # pool2d's failure stayed in its process


@needs_cupy
def test_smoke_checks_every_optimizer_kernel_against_the_xp_path(lazy_smoke):
    """Each optimizer family of optim.cu in both precisions, its kernels launched
    (every kernel of the file between them, zero_grad's included) and within the
    tolerance of the xp path."""
    stage, _ = lazy_smoke
    gpu_stages = import_bench("gpu_stages")
    from gpunet.benchmarks import awkward
    assert stage["results"]["processes"]["optim"] == {"exit_code": 0}
    checks = [c for c in stage["results"]["checks"] if c["family"] in awkward.OPTIMIZER_CASES]
    assert sorted((c["family"], c["dtype"]) for c in checks) == sorted(
        (family, dtype) for family in gpu_stages.KERNEL_FILES["optim"]
        for dtype in ("float32", "float64"))
    for check in checks:
        assert check["ok"] and check["max_error"] <= awkward.tolerance(check["dtype"], 3), check
        assert "zero_arrays" in check["kernels"], check
    assert {k for c in checks for k in c["kernels"]} == set(gpu_stages.file_kernels("optim"))
    assert not set(stage["results"]["kernels_not_launched"]) & set(gpu_stages.file_kernels("optim"))


@needs_cupy
def test_without_data_the_training_stage_is_skipped_without_a_download(tmp_path):
    cache = tmp_path / "cache"
    done = run_check("--dry-run", "--out", str(tmp_path), "--stage", "training",
                     env=bare_env(tmp_path, GPUNET_CACHE=str(cache),
                                  GPUNET_MIRROR="http://127.0.0.1:9/"))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("== training")]
    assert line.startswith("== training: skipped: no Fashion-MNIST files in ")
    assert "GPUNET_DATA" in line
    stage = dry_report(tmp_path)["stages"]["training"]
    assert stage["status"] == "skipped"
    assert not cache.exists()  # no download was begun


def test_the_training_data_is_found_only_where_it_was_put(tmp_path, monkeypatch):
    gpu_check = import_bench("gpu_check")
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte.gz"):
        (folder / name).write_bytes(b"")
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "data"))
    assert gpu_check.fashion_mnist_root(None) is None  # one file short
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    assert gpu_check.fashion_mnist_root(None) == str(folder)
    assert gpu_check.fashion_mnist_root(str(tmp_path)) is None  # the named folder, only
    assert gpu_check.fashion_mnist_root(str(folder)) == str(folder)


@needs_cupy
def test_a_rerun_of_some_stages_updates_the_report_that_came_back_in_out(tmp_path):
    """The report in --out is the one a GPU machine returns, perhaps dated the
    day before: a rerun of one stage keeps its other stages."""
    earlier = {"commit": "abc1234", "date": "2026-01-01", "stages": {
        "smoke": {"status": "ok", "seconds": 9.0, "budget_s": 30, "results": {"checks": []}}}}
    (tmp_path / f"gpu-2026-01-01-{DOUBLE_SLUG}.json").write_text(json.dumps(earlier))
    done = run_check("--dry-run", "--out", str(tmp_path), "--stage", "sanitizer",
                     env=bare_env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    stages = dry_report(tmp_path)["stages"]
    assert stages["smoke"] == earlier["stages"]["smoke"]
    assert stages["sanitizer"]["status"] == "skipped"


def test_on_a_gpu_a_rerun_reads_the_report_in_out_before_bench_results(tmp_path):
    gpu_check = import_bench("gpu_check")
    out, results = tmp_path / "out", tmp_path / "results"
    out.mkdir()
    results.mkdir()
    name = f"gpu-{datetime.date.today()}-nvidia-h200.json"
    paths = [str(out / name), str(results / name)]
    assert gpu_check.previous_report(str(out), "NVIDIA H200", paths) == {}
    (results / name).write_text(json.dumps({"from": "bench/results"}))
    assert gpu_check.previous_report(str(out), "NVIDIA H200", paths) == \
        {"from": "bench/results"}
    (out / "gpu-2026-01-01-nvidia-h200.json").write_text(json.dumps({"from": "out"}))
    (out / "gpu-2026-01-02-nvidia-h100-80gb-hbm3.json").write_text("{}")
    assert gpu_check.previous_report(str(out), "NVIDIA H200", paths) == {"from": "out"}


# -- the timing stage -------------------------------------------------------------------
@pytest.fixture(scope="module")
def dry_timings(tmp_path_factory):
    """One dry timing stage: its results."""
    tmp = tmp_path_factory.mktemp("timings")
    done = run_check("--dry-run", "--out", str(tmp), "--stage", "timings")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stage = dry_report(tmp)["stages"]["timings"]
    assert stage["status"] == "ok"
    return stage["results"]


@needs_cupy
def test_the_timing_stage_times_every_kernel_of_the_cu_files(dry_timings):
    """Every kernel of kernels/*.cu launched by a timed row (a new kernel without a
    timing fails here), each row naming the kernels its pass launched: the conv rows
    the plan's choice too, split-K included; batch norm in three launches a pass."""
    gpu_stages = import_bench("gpu_stages")
    rows = dry_timings["kernels"]
    assert {k for row in rows for k in row["kernels"]} == gpu_stages.kernel_names()
    assert dry_timings["kernels_not_timed"] == []
    assert sorted(dry_timings["kernels_timed"]) == sorted(gpu_stages.kernel_names())
    conv = [row for row in rows if row["op"].startswith("conv2d")]
    assert {row["op"] for row in conv} == {"conv2d_fwd", "conv2d_bwd", "conv2d_fwd_tf32",
                                           "conv2d_bwd_tf32"}
    for row in conv:
        assert row["plan_launched"] is True and row["plans"], row
        assert row["gpunet_ms"] > 0 and (row["xp_path_ms"] is None) == row["tf32"], row
        assert {p["kernel"] for p in row["plans"]} <= set(row["kernels"]), row
    assert any(p["split_k"] > 1 for row in conv for p in row["plans"] if p["pass"] == "weight")
    for row in rows:
        if row["op"].startswith("batch_norm"):
            assert len(row["kernels"]) == 3, row
    assert {row["op"] for row in rows} >= {"max_pool2d_fwd", "avg_pool2d_bwd"}
    assert dry_timings["train_steps"]["exit_code"] == 0


@needs_cupy
def test_the_timing_stage_times_an_optimizer_step_on_each_path(dry_timings):
    """zero_grad and step over LeNet-5's parameters (the dry run's net) for each
    optimizer the stage times: one zero_arrays launch and one update launch a
    parameter, beside the xp path; PyTorch's time absent only because the dry run
    has no CUDA PyTorch."""
    timings = import_bench("gpu_stages.timings")
    from gpunet import models
    sizes = [p.data.size for p in models.lenet5().parameters()]
    rows = [row for row in dry_timings["kernels"] if row["op"].endswith("_step")]
    assert sorted(row["shape"] for row in rows) == sorted(
        f"lenet5/{name}" for name in timings.OPTIMIZER_TIMINGS)
    kernel_of = {"adam": "adam_step", "sgd_momentum": "sgd_step", "momentum": "momentum_step",
                 "rmsprop": "rmsprop_step"}
    for row in rows:
        name = row["shape"].split("/")[1]
        assert row["op"] == f"{name}_step"
        assert row["kernels"] == ["zero_arrays"] + [kernel_of[name]] * len(sizes), row
        assert row["elements"] == sum(sizes) and len(row["dims"]) == len(sizes)
        assert row["gpunet_ms"] > 0 and row["xp_path_ms"] > 0 and row["torch_ms"] is None
        arrays = timings.OPTIMIZER_TIMINGS[name][3]
        assert row["gpunet_gbps"] == pytest.approx(
            4 * arrays * sum(sizes) / (row["gpunet_ms"] * 1e-3) / 1e9, rel=1e-2)


def test_without_tensor_cores_no_tf32_kernel_counts_as_untimed():
    """conv2d_fwd_tf32_split too (``_tf32`` inside its name, not at its end): a GPU
    without TF32 tensor cores never plans it."""
    gpu_stages = import_bench("gpu_stages")
    timings = import_bench("gpu_stages.timings")
    rows = [{"kernels": sorted(k for k in gpu_stages.kernel_names() if "_tf32" not in k)}]
    assert timings.untimed_kernels(rows, tensor_cores=False) == []
    assert timings.untimed_kernels(rows, tensor_cores=True) == sorted(
        k for k in gpu_stages.kernel_names() if "_tf32" in k)


@needs_cupy
@pytest.mark.parametrize("sms", [132, 114, 108, 84])
def test_on_a_gpu_the_timing_cases_take_every_path_the_plans_can_pick(dry_timings, sms):
    """No GPU needed: the conv kernels the plans pick for the timing cases on an H100
    SXM's 132 SMs, an H100 PCIe's 114, an A100's 108 and 84, float32 and TF32, are
    every kernel of conv2d.cu but those every backward launches whatever its plan
    (the split-K and bias reductions, seen in every conv row of the dry run); the
    weight gradient split both as a GEMM and in the direct kernel. Where the layer
    cases leave a kernel out, an extra case (net ``extra``, named for the kernel)
    takes it, and only then."""
    gpu_stages = import_bench("gpu_stages")
    timings = import_bench("gpu_stages.timings")
    from gpunet.benchmarks import LAYER_CASES
    backward = [set(row["kernels"]) for row in dry_timings["kernels"]
                if row["op"].startswith("conv2d_bwd")]
    always = set.intersection(*backward)
    assert always and not [k for k in always if k.startswith("conv2d_fwd")]
    assert always == set(timings.EVERY_BACKWARD)
    conv_kernels = set(gpu_stages.file_kernels("conv2d"))
    cases = timings.timing_cases(dry=False, sms=sms)
    planned = timings.planned_kernels(cases, sms)
    assert planned <= conv_kernels
    assert sorted(conv_kernels - always - planned) == [], f"not timed on {sms} SMs"
    split = {row["kernel"] for case in cases if case.op == "conv" for tf32 in (False, True)
             for row in timings.plan_rows(case, tf32, sms) if row["split_k"] > 1}
    assert {"conv2d_bwd_weight", "conv2d_bwd_weight_direct"} <= split
    assert {case.op for case in cases} == {"conv", "maxpool", "avgpool", "batchnorm"}
    layers = [case for case in cases if case.net != "extra"]
    assert len(layers) == len(LAYER_CASES) + sum(case.op == "maxpool" for case in LAYER_CASES)
    left_out = conv_kernels - always - timings.planned_kernels(layers, sms)
    extra = [case for case in cases if case.net == "extra"]
    assert bool(extra) == bool(left_out)
    for case in extra:  # named for a kernel the layer cases left out, which it takes
        assert case.name.startswith("for_") and case.name[len("for_"):] in left_out
        assert case.name[len("for_"):] in timings.planned_kernels([case], sms)
    if sms == 114:  # the PCIe card: no layer case splits a wide forward
        assert left_out == {"conv2d_fwd_wide_split"}


def test_the_extra_conv_cases_need_the_sm_count():
    timings = import_bench("gpu_stages.timings")
    with pytest.raises(ValueError, match="timing_cases: sms must be the GPU's SM count"):
        timings.timing_cases(dry=False)
