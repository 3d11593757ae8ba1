"""The CUDA device end to end: the CLI, checkpoints, moving models, gradient
checking, the examples. On a GPU these run on it; without one, with
``GPUNET_CUPY_DOUBLE=1``, through the CuPy test double (tests/cupy_double)."""
import os
import pathlib
import subprocess
import sys

import numpy
import pytest

import gpunet
from gpunet import backend, losses, nn, optim
from gpunet.data import transforms

from .helpers import CUPY_DOUBLE, assert_close
from .test_cli import run_cli

pytestmark = pytest.mark.gpu
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
QUICK = ["--dataset", "synthetic", "--limit", "96", "--dev-size", "32", "--batch-size", "16",
         "--no-progress", "--seed", "1"]


@pytest.fixture(autouse=True)
def _needs_cuda():
    reason = backend.cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")


def test_cli_trains_evaluates_and_resumes_on_the_device(tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli("train", "--model", "lenet5", "--epochs", "1", "--device",
                                   "cuda", "--out", str(out), *QUICK)
    assert code == 0, stderr[-3000:]
    assert "test accuracy:" in stdout
    code, stdout, stderr = run_cli("train", "--model", "lenet5", "--epochs", "2", "--resume",
                                   "--device", "cuda", "--out", str(out), *QUICK)
    assert code == 0, stderr[-3000:]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    code, stdout, stderr = run_cli("evaluate", str(out / "last.npz"), "--device", "cuda")
    assert code == 0, stderr[-3000:]
    assert stdout.startswith("loss ") and "synthetic test images" in stdout


def test_cli_gradcheck_and_info_on_the_device():
    code, stdout, stderr = run_cli("gradcheck", "lenet5", "--device", "cuda",
                                   "--max-per-param", "3")
    assert code == 0, stdout + stderr[-3000:]
    code, stdout, stderr = run_cli("info")
    assert code == 0, stderr
    assert "auto device: cuda:0" in stdout
    if CUPY_DOUBLE:  # never presented as a GPU
        assert "CuPy test double" in stdout and "+testdouble" in stdout


def _small_model():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(48, 4),
                         nn.Softmax())


def test_model_moves_to_the_device_and_back_unchanged(rng):
    model = _small_model()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    model.to("cuda")
    assert all(backend.device_of(p.data).kind == "cuda" for p in model.parameters())
    model.to("cpu")
    for key, value in model.state_dict().items():
        assert isinstance(value, numpy.ndarray) and numpy.array_equal(value, before[key]), key


def test_device_checkpoints_load_on_either_device(tmp_path, rng):
    x = rng.standard_normal((6, 1, 8, 8)).astype("float32")
    y = rng.integers(0, 4, 6)
    model = _small_model().to("cuda")
    loss = losses.SoftmaxCrossEntropy()
    opt = optim.Adam(model.parameters(), 1e-2)
    xd, yd = gpunet.to_device(x, "cuda"), gpunet.to_device(y, "cuda")
    for _ in range(2):
        opt.zero_grad()
        loss(model(xd), yd)
        model.backward(loss.backward())
        opt.step()
    gpunet.save(tmp_path / "ckpt.npz", model, opt, epoch=1)
    for device in ("cpu", "cuda"):
        other = _small_model().to(device)
        other_opt = optim.Adam(other.parameters(), 1e-2)
        gpunet.load(tmp_path / "ckpt.npz", other, other_opt)
        for (key, mine), theirs in zip(model.state_dict().items(), other.state_dict().values()):
            assert_close(theirs, mine, 0, 0, key)
        assert all(backend.device_of(p.data).kind == device for p in other.parameters())
        # state dicts holding device arrays load too (no numpy.asarray of a device array)
        other.load_state_dict({k: gpunet.to_device(v, "cuda")
                               for k, v in model.state_dict().items()})
        opt_state = opt.state_dict()
        opt_state["state"] = [{k: gpunet.to_device(v, "cuda") for k, v in s.items()}
                              for s in opt_state["state"]]
        other_opt.load_state_dict(opt_state)
        for slot in ("exp_avg", "exp_avg_sq"):
            assert_close(other_opt.state[0][slot], opt.state[0][slot], 0, 0, slot)
            assert backend.device_of(other_opt.state[0][slot]).kind == device


def test_standardize_fitted_on_the_device(rng):
    x = rng.standard_normal((10, 3, 4, 4)).astype("float32") * 2 + 1
    stats = transforms.Standardize().fit(gpunet.to_device(x, "cuda"))
    state = stats.state_dict()
    assert len(state["mean"]) == 3
    on_host = stats(x)  # statistics on the device, data on the host
    assert isinstance(on_host, numpy.ndarray)
    assert_close(on_host, transforms.Standardize().fit(x)(x), 1e-5, 1e-5)
    assert backend.device_of(stats(gpunet.to_device(x, "cuda"))).kind == "cuda"


def test_softmax_layer_on_the_device(rng):
    x = rng.standard_normal((4, 5))
    layer = nn.Softmax()
    y = layer(gpunet.to_device(x, "cuda"))
    dy = rng.standard_normal((4, 5))
    dx = layer.backward(gpunet.to_device(dy, "cuda"))
    cpu = nn.Softmax()
    assert_close(y, cpu(x), 1e-12, 1e-12, "y")
    assert_close(dx, cpu.backward(dy), 1e-12, 1e-12, "dx")


@pytest.mark.parametrize("script", ["alexnet_cifar10.py", "train_lenet_fashion_mnist.py"])
def test_examples_quick_on_the_device(tmp_path, script):
    if script.startswith("train_lenet") and not (
            os.path.isdir("/usr/share/datasets/fashion-mnist") or os.environ.get("GPUNET_DATA")):
        pytest.skip("Fashion-MNIST is not installed")
    env = dict(os.environ, MPLBACKEND="Agg")
    if CUPY_DOUBLE:  # the kernels' emulator is too slow for thousands of images: xp path
        env["GPUNET_KERNELS"] = "0"
    out = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--device", "cuda"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test accuracy" in out.stdout


def test_step_flops_while_the_current_device_is_cuda():
    from gpunet import benchmarks
    expected = benchmarks.step_flops("lenet5", 2)  # on the CPU
    gpunet.set_device("cuda")
    assert benchmarks.step_flops("lenet5", 2) == expected  # it fed NumPy zeros to a device model


def test_cli_bench_training_step_on_the_device(tmp_path):
    env = {"GPUNET_KERNELS": "0"} if CUPY_DOUBLE else {}  # the emulator: far too slow here
    code, stdout, stderr = run_cli("bench", "--device", "cuda", "--op", "step", "--net",
                                   "lenet5", "--rounds", "1", "--no-torch", "--out",
                                   str(tmp_path), env=env)
    assert code == 0, stderr[-3000:]
    assert "train_step" in stdout and list(tmp_path.glob("bench-cuda0-*.json"))
