"""The tests stage: the gpu-marked tests on the GPU, each under a timeout, junit
XML in the output folder."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from .common import BENCH, ROOT, StageContext, run_bounded


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

