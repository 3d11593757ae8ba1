"""The CUDA device end to end: the CLI, checkpoints, moving models, gradient
checking, the examples. On a GPU these run on it; without one, with
``GPUNET_CUPY_DOUBLE=1``, through the CuPy test double (tests/cupy_double)."""
import json
import os
import pathlib
import subprocess
import sys

import numpy
import pytest

import gpunet
from gpunet import backend, losses, nn, optim
from gpunet.data import transforms
from gpunet.train import train_step

from .helpers import CUPY_DOUBLE, assert_close
from .test_cli import run_cli
from .test_gradcheck import LAYERS as GRADCHECK_LAYERS

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
    if CUPY_DOUBLE:  # the run says what it ran on, never presenting the double as a GPU
        assert "on cuda:0 (CuPy test double" in stdout
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
    assert "train_step" in stdout
    (saved,) = tmp_path.glob("bench-cuda0-*.json")
    name = json.loads(saved.read_text())["environment"]["device_name"]
    assert ("CuPy test double" in name) == CUPY_DOUBLE


# Every layer, loss and optimizer on the device against the same on the CPU, in float64.
# gradcheck's table of every layer, and two more that hold others
LAYERS = {**GRADCHECK_LAYERS,
          "adaptive_avg_pool2d": (lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 5, 5)),
          "sequential": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2),
                                               nn.Flatten(), nn.Linear(8, 3)), (2, 1, 6, 6))}


def _on(device, array):
    return gpunet.to_device(array, device)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_forward_and_backward_on_the_device(name, rng):
    make, shape = LAYERS[name]
    x = rng.standard_normal(shape) * 2 + 0.5
    gpunet.manual_seed(3)
    results = {}
    for device in ("cpu", "cuda"):
        gpunet.set_device("cpu")
        gpunet.manual_seed(3)
        layer = make().to(device, dtype="float64")
        y = layer(_on(device, x))
        dy = numpy.cos(3 * backend.to_numpy(y) + 1)
        dx = layer.backward(_on(device, dy))
        grads = [backend.to_numpy(p.grad) for p in layer.parameters()]
        assert backend.device_of(y).kind == backend.device_of(dx).kind == device
        results[device] = (backend.to_numpy(y), backend.to_numpy(dx), grads)
    (y, dx, grads), (y_d, dx_d, grads_d) = results["cpu"], results["cuda"]
    assert_close(y_d, y, 1e-10, 1e-12, f"{name} y")
    assert_close(dx_d, dx, 1e-10, 1e-12, f"{name} dx")
    for i, (g_d, g) in enumerate(zip(grads_d, grads)):
        assert_close(g_d, g, 1e-10, 1e-12, f"{name} parameter {i} gradient")


def _cpu_code_entered(device, kernels, rng) -> set[str]:
    """The functions of gpunet/cpu/ (the CPU accelerators and their threads) and of
    threadpoolctl that a forward and backward of every layer on ``device``, and a
    training step of a model, call: a profile hook on this thread, which is where any
    handing of work to CPU threads starts."""
    import gpunet.cpu
    from gpunet.cuda import runtime
    watched = os.path.dirname(os.path.abspath(gpunet.cpu.__file__)) + os.sep
    entered = set()

    def profile(frame, event, arg):
        name = frame.f_code.co_filename
        if event == "call" and (name.startswith(watched) or "threadpoolctl" in name):
            entered.add(f"{os.path.basename(name)}:{frame.f_code.co_name}")

    enabled = runtime.kernels_enabled()
    runtime.set_kernels_enabled(kernels)
    try:
        for make, shape in LAYERS.values():
            layer = make().to(device, dtype="float64")
            x = _on(device, rng.standard_normal(shape))
            sys.setprofile(profile)
            try:
                y = layer(x)
                layer.backward(y * 0.5)
            finally:
                sys.setprofile(None)
        model = LAYERS["sequential"][0]().to(device, dtype="float64")
        optimizer = optim.Adam(model.parameters(), lr=1e-3)
        x, labels = _on(device, rng.standard_normal((4, 1, 6, 6))), _on(device, numpy.arange(4) % 3)
        sys.setprofile(profile)
        try:
            train_step(model, losses.SoftmaxCrossEntropy(), optimizer, x, labels)
        finally:
            sys.setprofile(None)
    finally:
        runtime.set_kernels_enabled(enabled)
    return entered


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "xp-path"])
def test_the_device_path_never_enters_gpunet_cpu(kernels, rng):
    """Every layer forward and backward on the device, and a training step, through
    the kernels or the xp path, without entering gpunet/cpu/ or threadpoolctl; the
    same on the CPU does enter it (so the hook sees what it should)."""
    assert _cpu_code_entered("cuda", kernels, rng) == set()
    on_the_cpu = _cpu_code_entered("cpu", kernels, rng)
    assert {"parallel.py:single_threaded_blas", "conv2d.py:forward",
            "pool2d.py:forward"} <= on_the_cpu, on_the_cpu


def test_dropout_in_training_on_the_device():
    layer = nn.Dropout(0.25).to("cuda")
    x = _on("cuda", numpy.ones((200, 50)))
    y = backend.to_numpy(layer(x))
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8 and numpy.allclose(y[kept], 1 / 0.75)
    dx = backend.to_numpy(layer.backward(_on("cuda", numpy.ones((200, 50)))))
    assert numpy.array_equal(dx, y)  # the same mask, the same scale


LOSSES = {
    "softmax_cross_entropy": (losses.SoftmaxCrossEntropy, lambda r: r.integers(0, 4, 5)),
    "binary_cross_entropy": (losses.BinaryCrossEntropy,
                             lambda r: r.integers(0, 2, (5, 4)).astype("float64")),
    "mse": (losses.MSELoss, lambda r: r.standard_normal((5, 4))),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_on_the_device(name, rng):
    make, targets = LOSSES[name]
    outputs, y = rng.standard_normal((5, 4)), targets(rng)
    cpu, gpu = make(), make()
    assert abs(gpu(_on("cuda", outputs), _on("cuda", y)) - cpu(outputs, y)) < 1e-12
    assert_close(gpu.backward(), cpu.backward(), 1e-10, 1e-12, f"{name} gradient")


OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, 0.1, weight_decay=0.01),
    "sgd_momentum": lambda ps: optim.SGD(ps, 0.1, momentum=0.8, dampening=0.3),
    "sgd_nesterov": lambda ps: optim.SGD(ps, 0.1, momentum=0.8, nesterov=True),
    "momentum": lambda ps: optim.Momentum(ps, 0.1, beta=0.9, weight_decay=0.01),
    "rmsprop": lambda ps: optim.RMSProp(ps, 0.01, beta=0.9),
    "adam": lambda ps: optim.Adam(ps, 0.01, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_step_on_the_device(name, rng):
    grads = rng.standard_normal((4, 3, 2))
    finals = []
    for device in ("cpu", "cuda"):
        weight = nn.Parameter(_on(device, numpy.array([[1.0, -2.0], [0.5, 3.0], [2.0, 1.0]])))
        opt = OPTIMIZERS[name]([weight])
        for g in grads:
            opt.zero_grad()
            weight.grad += _on(device, g)
            opt.step()
        assert backend.device_of(weight.data).kind == device
        finals.append(backend.to_numpy(weight.data))
    assert_close(finals[1], finals[0], 1e-12, 1e-14, f"{name} after 4 steps")


@pytest.fixture
def two_gpus(monkeypatch):
    """Two devices: the double's second one, or a machine's second GPU."""
    import cupy
    if CUPY_DOUBLE:
        monkeypatch.setattr(cupy.cuda.runtime, "DEVICE_COUNT", 2)
    elif cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one GPU only")
    yield cupy
    cupy.cuda.Device(0).use()


def test_training_on_the_second_gpu(two_gpus, rng):
    """``set_device("cuda:1")`` makes GPU 1 current: weights, biases, batch-norm
    buffers, gradients, optimizer state, kernel outputs and dropout masks all live
    there (biases and gradients used to land on GPU 0, and the first forward failed),
    and the steps are those of the CPU."""
    x = rng.standard_normal((32, 1, 28, 28))
    y = rng.integers(0, 10, 32)
    trained = {}
    for device in ("cpu", "cuda:1"):
        gpunet.set_device(device)
        gpunet.manual_seed(3)
        model = gpunet.models.lenet5(batch_norm=True).to(dtype="float64")
        opt = optim.Adam(model.parameters(), 1e-3)
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, (x, y), 2, 16, progress=False)
        if device != "cpu":
            arrays = [*(p.data for p in model.parameters()), *(p.grad for p in model.parameters()),
                      *(b for _, b in model.named_buffers()), *(s for slots in opt.state
                                                             for s in slots.values())]
            assert {a.device.id for a in arrays} == {1}
        trained[device] = model.state_dict()
    for key, value in trained["cpu"].items():
        # (atol: the conv bias before batch norm has a true gradient of 0, and noise)
        assert_close(trained["cuda:1"][key], value, 1e-10, 1e-9, key)
    gpunet.set_device("cuda:1")
    dropout = nn.Dropout(0.5)
    assert dropout(two_gpus.ones((4, 8))).device.id == 1


def test_a_kernel_refuses_arrays_of_another_gpu(two_gpus, monkeypatch, rng):
    """A launch whose arrays are not on the current device says which devices, rather
    than faulting on a foreign pointer. Without peer access CuPy itself refuses the
    arrays earlier; with it (the double made to allow it) only gpunet's check stands
    between the kernel and GPU 0's pointers."""
    if CUPY_DOUBLE:
        monkeypatch.setattr(two_gpus._core, "on_current_device", lambda array, where: None)
    from gpunet.cuda import runtime
    with two_gpus.cuda.Device(0):
        sums = [two_gpus.ones((3, 2)) for _ in range(2)]
        totals = [two_gpus.zeros(3) for _ in range(2)]
    gpunet.set_device("cuda:1")
    with pytest.raises(ValueError, match=r"bn_bwd_reduce_combine: an argument is on cuda:0 "
                                         r"but the current device is cuda:1"):
        runtime.launch("batchnorm", "bn_bwd_reduce_combine", "float64", (1, 1, 1), (256, 1, 1),
                       (*sums, *totals, numpy.int32(3), numpy.int32(2)))
