"""Every example runs with --quick (in a scratch folder) and says what it claims."""
import os
import pathlib
import subprocess
import sys

import pytest

from .helpers import HAS_MATPLOTLIB, REPO_ROOT, only_error_line

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
HAS_FASHION = os.path.isdir("/usr/share/datasets/fashion-mnist") or bool(
    os.environ.get("GPUNET_DATA"))


def run_example(name, tmp_path, *args):
    env = dict(os.environ, GPUNET_DEVICE="cpu", MPLBACKEND="Agg")
    out = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_gradient_checking(tmp_path):
    out = run_example("gradient_checking.py", tmp_path)
    assert ": great" in out and ": bug" in out and "worst array: 5.weight" in out


@pytest.mark.skipif(not HAS_FASHION, reason="Fashion-MNIST is not installed")
def test_train_lenet_fashion_mnist(tmp_path):
    out = run_example("train_lenet_fashion_mnist.py", tmp_path, "--quick")
    accuracy = float(out.strip().splitlines()[-1].split()[-1])
    assert accuracy > 0.6
    assert (tmp_path / "runs/lenet-fashion-mnist/curves.png").exists() == HAS_MATPLOTLIB
    assert ("no curves.png: History.plot needs matplotlib" in out) != HAS_MATPLOTLIB


@pytest.mark.slow
def test_alexnet_cifar10_falls_back_to_synthetic_data_and_says_so(tmp_path):
    empty = tmp_path / "no-cifar"
    empty.mkdir()
    out = run_example("alexnet_cifar10.py", tmp_path, "--quick", "--data-root", str(empty))
    lines = out.splitlines()
    assert lines[0].startswith("CIFAR-10 not found (cifar10: no CIFAR-10 batches")
    assert lines[0].endswith(": using synthetic 32x32x3 data instead")
    assert lines[-1].startswith("alexnet_cifar on synthetic data: test accuracy ")


def test_hyperparameter_search(tmp_path):
    pytest.importorskip("optuna", reason="gpunet.tune needs Optuna")
    out = run_example("hyperparameter_search.py", tmp_path, "--quick")
    rows = [line.split() for line in out.splitlines() if " complete " in line]
    assert len(rows) == 4
    for row in rows:  # trial, state, val acc, epoch, seconds, lr, momentum
        lr, beta = float(row[5]), float(row[6])
        assert 1e-4 <= lr <= 1e-1 and 0.9 <= beta <= 0.999
    assert "best: gpunet train " in out and "--optimizer momentum" in out


def test_vanishing_exploding(tmp_path):
    out = run_example("vanishing_exploding.py", tmp_path, "--quick", "--out", str(tmp_path))
    assert "1.5^20 = 3.3253e+03, 0.5^20 = 9.5367e-07" in out
    assert (tmp_path / "vanishing_exploding.png").exists() == HAS_MATPLOTLIB


def test_ewma_temperature(tmp_path):
    out = run_example("ewma_temperature.py", tmp_path, "--out", str(tmp_path))
    day1 = [line for line in out.splitlines() if line.strip().startswith("1 ")][0].split()
    # without bias correction day 1 is (1 - beta) theta_1; with it, theta_1 itself
    theta = float(day1[1])
    assert float(day1[4]) == pytest.approx(theta, abs=0.1)
    assert float(day1[-3]) == pytest.approx(0.02 * theta, abs=0.1)
    assert "beta 0.98: averages ~50 days" in out
    assert (tmp_path / "ewma.png").exists() == HAS_MATPLOTLIB


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the example reads its photo with matplotlib")
def test_edge_detection(tmp_path):
    out = run_example("edge_detection.py", tmp_path, "--quick", "--out", str(tmp_path))
    assert "edge maps (148, 126)" in out
    assert (tmp_path / "edges.png").read_bytes()[:4] == b"\x89PNG"


def test_initialization(tmp_path):
    out = run_example("initialization.py", tmp_path, "--quick")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["zeros"][-3] == "1"            # one distinct hidden unit: symmetry kept
    assert float(rows["he"][3]) > 0.95          # He learns the rings
    assert float(rows["large"][1]) > 100 * float(rows["he"][1])  # huge initial loss


def test_hyperparameter_search_a_second_time_or_without_optuna(tmp_path):
    """One line and exit status 1, never a traceback: a second run says what to do
    with the first one's search (left as it was), and no Optuna says how to get it
    (issue 25.13)."""
    earlier = tmp_path / "runs" / "hyperparameter-search"
    earlier.mkdir(parents=True)
    (earlier / "tune.json").write_text('{"earlier": true}')
    env = dict(os.environ, GPUNET_DEVICE="cpu", MPLBACKEND="Agg")
    again = subprocess.run([sys.executable, str(EXAMPLES / "hyperparameter_search.py"),
                            "--quick"], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path, env=env)
    assert again.returncode == 1 and again.stderr.strip() == (
        "runs/hyperparameter-search holds the search of an earlier run: --overwrite replaces "
        "it, gpunet tune --resume --out runs/hyperparameter-search continues it")
    assert (earlier / "tune.json").read_text() == '{"earlier": true}'
    no_optuna = tmp_path / "no-optuna"
    no_optuna.mkdir()
    (no_optuna / "optuna.py").write_text("raise ImportError('No module named optuna')\n")
    env["PYTHONPATH"] = os.pathsep.join([str(no_optuna), env.get("PYTHONPATH", "")])
    bare = subprocess.run([sys.executable, str(EXAMPLES / "hyperparameter_search.py"),
                           "--quick", "--out", "elsewhere"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    assert bare.returncode == 1 and bare.stderr.strip().splitlines()[-1] == (
        "hyperparameter_search: gpunet tune needs Optuna: pip install 'gpunet[tune]' "
        "(or pip install optuna)")
    assert "Traceback" not in bare.stderr


EXAMPLE_SCRIPTS = sorted((REPO_ROOT / "examples").glob("*.py"))


def _no_gpu() -> bool:
    from gpunet.backend import cuda_unavailable_reason
    return cuda_unavailable_reason() is not None


@pytest.mark.parametrize("device", ["cuda", "tpu"])
@pytest.mark.parametrize("how", ["flag", "environment"])
@pytest.mark.parametrize("example", [e.name for e in EXAMPLE_SCRIPTS])
def test_every_example_refuses_an_unusable_device_in_one_line(example, how, device, tmp_path):
    if device == "cuda" and not _no_gpu():
        pytest.skip("a GPU is usable here")
    if example == "hyperparameter_search.py":
        pytest.skip("its device goes to gpunet.tune's trials (issue 25.13, the tune part)")
    script = str(REPO_ROOT / "examples" / example)
    takes_device = "--device" in (REPO_ROOT / "examples" / example).read_text()
    if how == "flag" and not takes_device:
        pytest.skip(f"{example} has no --device")
    env = {**os.environ, "MPLBACKEND": "Agg", "GPUNET_DATA": str(tmp_path / "none"),
           "PYTHONPATH": str(REPO_ROOT), "GPUNET_DEVICE": device if how == "environment" else "cpu"}
    args = ["--quick"] + (["--device", device] if how == "flag" else [])
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    if takes_device:  # the others run on the CPU whatever the environment says
        assert done.returncode == 2
        given = f"--device {device}" if how == "flag" else f"GPUNET_DEVICE={device}"
        assert only_error_line(done).startswith(f"{example}: error: {given}: ")
    else:
        assert done.returncode == 0, done.stderr
