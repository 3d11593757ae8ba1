"""What the stages share: the context a stage reports through, bounded child
processes, the CUDA tools, the kernel files and their kernels, and a recorder of
the kernels a piece of code launches."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


# Each kernel file with the awkward cases (gpunet.benchmarks.awkward) that launch
# its kernels: the smoke stage and the sanitizer run one file per process, so that
# a fault is reported in the process of the kernel that made it, not by whatever
# CUDA call comes next
KERNEL_FILES = {"conv2d": ("conv2d", "conv2d_wide", "conv2d_wide_grads", "conv2d_direct",
                           "conv2d_tf32", "conv2d_split", "conv2d_wide_split",
                           "conv2d_split_tf32"),
                "pool2d": ("max_pool2d", "avg_pool2d"),
                "batchnorm": ("batch_norm",),
                "optim": ("adam", "adamw", "sgd", "sgd_nesterov", "sgd_dampening", "momentum",
                          "rmsprop")}


def file_kernels(name: str) -> list[str]:
    """The kernels of ``kernels/<name>.cu``, in the order they are defined."""
    with open(os.path.join(ROOT, "kernels", f"{name}.cu")) as f:
        return re.findall(r'extern\s+"C"\s+__global__\s+void\s+'
                          r'(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)', f.read())


def kernel_names() -> set[str]:
    return {kernel for name in KERNEL_FILES for kernel in file_kernels(name)}



def bench_script(name: str):
    """The module of ``bench/<name>.py`` (imported once, by its path: bench/ is a
    folder of scripts, not a package, and need not be on sys.path)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def child_env(**extra) -> dict:
    """This process's environment for a child that imports the stages (``python -m
    gpu_stages.smoke``): bench/ and the repository first on its path."""
    paths = [BENCH, ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), **extra)


@contextlib.contextmanager
def recorded_launches():
    """The names of the kernels launched inside the block, in order, as a list that
    fills as they go (a fault leaves the kernel that made it last)."""
    from gpunet.cuda import runtime
    launched = []
    original = runtime.launch

    def recording(name, kernel, *args, **kwargs):
        launched.append(kernel)
        return original(name, kernel, *args, **kwargs)

    runtime.launch = recording
    try:
        yield launched
    finally:
        runtime.launch = original
