"""The CUDA sources ship inside the wheel, and kernel_dir() finds them there."""
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(out), ROOT], capture_output=True, text=True, timeout=600)
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip()[-300:]}")
    (path,) = out.glob("gpunet-*.whl")
    return path


def test_wheel_contains_every_kernel_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = sorted(f for f in os.listdir(os.path.join(ROOT, "kernels"))
                     if f.endswith((".cu", ".cuh")))
    assert sources
    for f in sources:
        assert f"gpunet/_kernels/{f}" in names, f


def test_kernel_dir_finds_the_sources_in_an_installed_wheel(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = ("import gpunet.cuda as c, os; d = c.kernel_dir(); "
            "print(d); assert os.path.isfile(os.path.join(d, 'conv2d.cu'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "gpunet" / "_kernels")
