"""bench/gpu_check.py, the script a short GPU slot runs: it must never be what
fails there. Its dry run goes through the CuPy test double (make gpu-check-dry
runs every stage; here, what happens when a stage runs out of its budget)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.py")
needs_cupy = pytest.mark.skipif(importlib.util.find_spec("cupy") is None,
                                reason="the CuPy test double reads the real CuPy")


def run_check(*args):
    env = {k: v for k, v in os.environ.items() if k != "GPUNET_CUPY_DOUBLE"}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


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


@needs_cupy
def test_the_sanitizer_stage_runs_each_tool_and_reads_its_summary(tmp_path):
    """The one stage the dry run skips, with a stand-in compute-sanitizer that runs
    the script as the real one would and prints the real one's summary line."""
    fake = tmp_path / "bin" / "compute-sanitizer"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n"
                    "tool=$2; shift 4\n"  # --tool T --error-exitcode 1
                    "\"$@\" || exit 1\n"
                    "if [ \"$tool\" = racecheck ]; then\n"
                    "  echo '========= RACECHECK SUMMARY: 0 hazards displayed'; exit 0\n"
                    "fi\n"
                    "echo '========= ERROR SUMMARY: 0 errors'\n")
    fake.chmod(0o755)
    result = tmp_path / "stage.json"
    env = {k: v for k, v in os.environ.items() if k != "GPUNET_CUPY_DOUBLE"}
    env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "tests", "cupy_double"), ROOT,
                                         os.path.join(ROOT, "bench")])
    env["GPUNET_CUPY_DOUBLE"] = "1"
    done = subprocess.run([sys.executable, SCRIPT, "--run-stage", "sanitizer", "--result",
                           str(result), "--out", str(tmp_path), "--budget", "240", "--dry-run"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(result.read_text())
    assert set(rows) == {"memcheck", "racecheck", "synccheck"}
    assert rows["memcheck"] == {"exit_code": 0, "summary": "ERROR SUMMARY: 0 errors"}
    assert rows["racecheck"]["summary"].startswith("RACECHECK SUMMARY: 0 hazards")
