"""Tried as a GPU user would (issue 30): evaluation memory, batch norm without the
bias before it, bench on a GPU machine with PyTorch's CPU build, out-of-memory
messages, device memory in ``bench --memory`` and one rule for the GPUNET_*
variables. Tests marked ``gpu`` run through the CuPy test double without a GPU
(``GPUNET_CUPY_DOUBLE=1``), where its pool's limit stands in for a small GPU."""
import inspect
import json
import os
import subprocess
import sys

import numpy
import pytest

import gpunet
from gpunet import backend, benchmarks, cli, config, losses, models, nn, optim, train
from gpunet.cli import inspection
from gpunet.io import CheckpointError
from gpunet.recipe import training as recipe_training

from .helpers import CUPY_DOUBLE, assert_close

QUICK = ["--dataset", "synthetic", "--limit", "96", "--dev-size", "32", "--batch-size", "16",
         "--no-progress", "--seed", "1"]


def _needs_cuda():
    reason = backend.cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")


@pytest.fixture
def small_gpu(monkeypatch):
    """``limit(extra_bytes)``: the double's pool refuses to grow more than this above
    what is held now, as a small GPU would; undone afterwards. The CUDA kernels run
    in the double's emulator, far too slow for whole epochs: the xp path runs."""
    _needs_cuda()
    if not CUPY_DOUBLE:
        pytest.skip("limits the CuPy test double's pool")
    import cupy

    from gpunet import cuda
    pool = cupy.get_default_memory_pool()
    was_enabled = cuda.kernels_enabled()
    cuda.set_kernels_enabled(False)

    def limit(extra_bytes):
        pool.free_all_blocks()
        pool.set_limit(size=pool.used_bytes() + extra_bytes)

    yield limit
    pool.set_limit(size=0)
    cuda.set_kernels_enabled(was_enabled)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("gpunet:")
             and "warning" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 3. evaluation at the training batch size; the epoch saved before validating ----------


@pytest.mark.gpu
def test_fit_validates_at_the_training_batch_size_on_a_small_gpu(small_gpu, rng):
    """Training at batch 8 fits the GPU, a validation batch of 256 would not: fit
    evaluates at its own batch size."""
    gpunet.set_device("cuda")
    gpunet.manual_seed(0)
    model = models.lenet5()
    x = rng.standard_normal((300, 1, 28, 28)).astype(numpy.float32)
    y = rng.integers(0, 10, 300)
    small_gpu(12 * 2**20)  # im2col of 256 images for conv1 alone: 256 * 25 * 784 * 4 = 20 MB
    history = gpunet.fit(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()),
                         (x[:16], y[:16]), 1, 8, val_data=(x, y), progress=False)
    assert numpy.isfinite(history["val_loss"][0])


def test_cli_evaluate_uses_the_training_batch_size_or_the_flag(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    seen = []
    real = train.evaluate

    def spy(model, data, batch_size=256, **kwargs):
        seen.append(batch_size)
        return real(model, data, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(train, "evaluate", spy)  # fit's validation
    monkeypatch.setattr(recipe_training, "evaluate", spy)  # train's test set
    monkeypatch.setattr(inspection, "evaluate", spy)  # gpunet evaluate
    assert cli.main(["train", "--epochs", "1", "--out", str(out), *QUICK,
                     "--device", "cpu"]) == 0
    assert seen == [16, 16]  # validation and test, at --batch-size
    assert cli.main(["evaluate", str(out / "last.npz"), "--device", "cpu"]) == 0
    assert cli.main(["evaluate", str(out / "last.npz"), "--device", "cpu",
                     "--batch-size", "5"]) == 0
    assert seen[2:] == [16, 5]
    capsys.readouterr()


@pytest.mark.gpu
def test_cli_saves_the_epoch_before_validating_and_resumes_at_validation(tmp_path, capsys,
                                                                         monkeypatch):
    """Validation running out of GPU memory no longer loses the epoch: last.npz holds
    it, and --resume goes straight to validating it."""
    _needs_cuda()
    import cupy
    out = tmp_path / "run"
    real = train.evaluate

    def out_of_memory(*args, **kwargs):
        raise cupy.cuda.memory.OutOfMemoryError(1 << 30, 1 << 20, 1 << 29)

    monkeypatch.setattr(train, "evaluate", out_of_memory)
    from gpunet import cuda
    was_enabled = cuda.kernels_enabled()
    cuda.set_kernels_enabled(False)  # the double's emulator: far too slow for an epoch
    try:
        code = cli.main(["train", "--epochs", "1", "--device", "cuda", "--out", str(out),
                         *QUICK])
        assert code == 1
        line = _one_line(capsys.readouterr().err)
        assert "validation" in line and "GPU memory" in line
        assert (out / "last.npz").exists()
        monkeypatch.setattr(train, "evaluate", real)
        steps = []
        monkeypatch.setattr(train, "train_step", lambda *a, **k: steps.append(1) or (0.0, 0))
        assert cli.main(["train", "--epochs", "1", "--resume", "--device", "cuda", "--out",
                         str(out), *QUICK]) == 0
        assert steps == []  # the epoch's steps were not run again
        rows = (out / "metrics.csv").read_text().splitlines()
        assert [r.split(",")[0] for r in rows[1:]] == ["1"]
    finally:
        cuda.set_kernels_enabled(was_enabled)


# -- 8. out of memory: which command and phase, GPU or host, what the model needs ------------


@pytest.mark.gpu
def test_cli_a_model_larger_than_the_gpu_is_named_before_the_first_step(small_gpu, capsys):
    small_gpu(2 * 2**20)  # AlexNet-CIFAR's parameters alone: 6 MB
    code = cli.main(["train", "--model", "alexnet_cifar", "--epochs", "1", "--device", "cuda",
                     "--out", "unused-out", *QUICK[:-2]])
    line = _one_line(capsys.readouterr().err)
    assert code == 1
    assert "train: out of GPU memory on cuda:0 while building the model" in line
    assert "alexnet_cifar has 1,503,050 parameters (5.7 MiB" in line
    assert "with gradients and adam state" in line and "at batch 16" in line
    assert "choose a smaller --model" in line and "--batch-size" not in line


@pytest.mark.gpu
def test_cli_evaluate_out_of_gpu_memory_says_what_to_lower(small_gpu, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "1", "--out", str(out), *QUICK, "--device",
                     "cpu"]) == 0
    capsys.readouterr()
    small_gpu(2**20)  # LeNet-5's parameters fit (0.25 MB), 16 images' im2col does not
    code = cli.main(["evaluate", str(out / "last.npz"), "--device", "cuda"])
    line = _one_line(capsys.readouterr().err)
    assert code == 1, line
    assert "evaluate: out of GPU memory on cuda:0 while evaluating the synthetic test set " \
           "(evaluating 500 examples)" in line
    assert "lenet5 has 62,006 parameters" in line and "activations take" in line
    assert "at batch 16" in line
    assert "lower --batch-size (now 16)" in line and "smaller --model" not in line


def test_cli_out_of_host_memory_in_a_step_says_host(tmp_path, capsys, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 3.00 GiB for an array")

    monkeypatch.setattr(train, "train_step", no_memory)
    code = cli.main(["train", "--epochs", "1", "--out", str(tmp_path / "run"), *QUICK,
                     "--device", "cpu"])
    line = _one_line(capsys.readouterr().err)
    assert code == 1
    assert "train: out of host memory while training (epoch 1, step 1): Unable to " \
           "allocate 3.00 GiB" in line
    assert "lenet5 has 62,006 parameters" in line and "lower --batch-size (now 16)" in line
    assert "GPU" not in line and "--device cpu" not in line


# -- 10. one rule for the device and for every boolean GPUNET_* variable ---------------------


FLAGS = sorted(v.name for v in config.VARIABLES.values() if v.kind == "flag")


@pytest.mark.parametrize("name", FLAGS)
def test_cli_refuses_a_bad_boolean_variable_in_one_line(name, monkeypatch, capsys):
    monkeypatch.setenv(name, "maybe")
    assert cli.main(["summary", "lenet5"]) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"gpunet: error: {name}: expected 1/0, true/false, yes/no or on/off, got 'maybe'")


def test_true_and_off_are_taken_in_a_fresh_process():
    env = dict(os.environ, GPUNET_ALLOW_TF32="true", GPUNET_KERNELS="Off",
               GPUNET_CPU_ACCEL="no", GPUNET_DEVICE="cpu")
    code = ("from gpunet import cuda, ops; print(cuda.allow_tf32(), cuda.kernels_enabled(), "
            "ops.cpu_accelerators_enabled())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "False"]
    env["GPUNET_KEEP_FREED_MEMORY"] = "maybe"  # read by fit and the CLI, not at import
    done = subprocess.run([sys.executable, "-c", "import gpunet"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stderr == ""


@pytest.fixture
def tiny_bench(monkeypatch):
    monkeypatch.setattr(benchmarks.timing, "SWITCH_PAUSE_S", 0.0)
    monkeypatch.setattr(benchmarks.timing, "SETTLE_S", 0.0)
    tiny = benchmarks.Case("lenet5", "pool1", "maxpool", (2, 6, 28, 28), (2, 2))
    monkeypatch.setattr(benchmarks, "CASES", [tiny])


@pytest.mark.parametrize("command", [["gradcheck", "lenet5", "--max-per-param", "1"],
                                     ["bench", "--rounds", "1", "--no-torch"]])
def test_gradcheck_and_bench_follow_gpunet_device(command, tiny_bench, monkeypatch, capsys,
                                                  tmp_path):
    monkeypatch.setenv("GPUNET_DEVICE", "cuda:3")
    assert cli.main([*command, *(["--out", str(tmp_path)] if command[0] == "bench" else [])]) \
        == 2
    assert "GPUNET_DEVICE=cuda:3: cannot use cuda:3" in _one_line(capsys.readouterr().err)


@pytest.mark.gpu
def test_bench_runs_on_the_device_gpunet_device_names(tiny_bench, monkeypatch, tmp_path,
                                                       capsys):
    _needs_cuda()
    monkeypatch.setenv("GPUNET_DEVICE", "cuda")
    assert cli.main(["bench", "--rounds", "1", "--no-torch", "--out", str(tmp_path)]) == 0
    assert "cuda:0" in capsys.readouterr().out
    assert len(list(tmp_path.glob("bench-cuda0-*.json"))) == 1


# -- 5. bench on a GPU machine with PyTorch's CPU build --------------------------------------


@pytest.mark.gpu
def test_bench_on_cuda_with_pytorchs_cpu_build_skips_its_column_in_one_line(
        tiny_bench, tmp_path, capsys):
    _needs_cuda()
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this PyTorch can use the GPU")
    assert cli.main(["bench", "--device", "cuda", "--rounds", "1", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert _one_line(captured.err).startswith(
        "gpunet: the PyTorch column is skipped: PyTorch ") and "a CPU build" in captured.err
    (path,) = tmp_path.glob("bench-cuda0-*.json")
    (row,) = json.loads(path.read_text())["rows"]
    assert row["torch_ms"] is None and row["gpunet_ms"] > 0


# -- 4. no bias before a batch norm ----------------------------------------------------------

# every shipped model with a batch-norm option, built with it
BATCH_NORM_MODELS = {name: make for name, make in models.MODELS.items()
                     if "batch_norm" in inspect.signature(make).parameters}


def _layers_before_batch_norm(model):
    for _, parent in model.named_modules():
        children = list(parent.children())
        for layer, after in zip(children, children[1:]):
            if isinstance(after, (nn.BatchNorm1d, nn.BatchNorm2d)):
                yield layer


def test_no_shipped_model_has_a_bias_before_a_batch_norm():
    assert sorted(BATCH_NORM_MODELS) == ["lenet5", "vgg_cifar"]
    for name, make in BATCH_NORM_MODELS.items():
        before = list(_layers_before_batch_norm(make(batch_norm=True)))
        assert before and all(layer.bias is None for layer in before), name
        assert all(layer.bias is not None
                   for layer in make(batch_norm=False).modules()
                   if isinstance(layer, (nn.Conv2d, nn.Linear))), name


def test_batch_norm_parameter_counts_in_the_summary(capsys):
    assert gpunet.summary(models.lenet5(batch_norm=True), (1, 28, 28),
                          print_table=False).total_params == 61_706 - 226 + 2 * 226
    assert gpunet.summary(models.vgg_cifar(), (3, 32, 32),
                          print_table=False).total_params == 5_029_706
    assert cli.main(["summary", "vgg_cifar"]) == 0
    assert "total parameters: 5,029,706" in capsys.readouterr().out


def _old_lenet5_batch_norm():
    """LeNet-5 with batch norm as gpunet built it before: a bias before every norm."""
    from gpunet.models.lenet import InputConv
    return nn.Sequential(
        InputConv(1, 6, 5), nn.BatchNorm2d(6), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
        nn.Linear(400, 120), nn.BatchNorm1d(120), nn.ReLU(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.ReLU(), nn.Linear(84, 10))


def test_an_old_checkpoint_with_biases_before_batch_norm_loads_the_same_model(tmp_path, rng):
    old = _old_lenet5_batch_norm()
    for key, value in old.state_dict().items():  # trained-looking biases and statistics
        if key.endswith(("bias", "running_mean")):
            value = rng.standard_normal(value.shape).astype(numpy.float32)
        elif key.endswith("running_var"):
            value = rng.uniform(0.5, 2, value.shape).astype(numpy.float32)
        else:
            continue
        old.load_state_dict({**old.state_dict(), key: value})
    path = gpunet.save(tmp_path / "old.npz", old, optim.Adam(old.parameters()))
    new = models.lenet5(batch_norm=True)
    gpunet.load(path, new)
    x = rng.standard_normal((5, 1, 28, 28)).astype(numpy.float32)
    assert_close(new.eval()(x), old.eval()(x), 1e-5, 1e-5, "eval outputs")
    with pytest.raises(CheckpointError, match=r"old\.npz: saved by an older gpunet with a "
                                              r"bias before each batch norm \(0\.bias, "):
        gpunet.load(path, models.lenet5(batch_norm=True),
                    optim.Adam(models.lenet5(batch_norm=True).parameters()))


def test_the_pytorch_twin_has_no_bias_before_batch_norm_either(rng):
    torch = pytest.importorskip("torch")
    ours = models.lenet5(batch_norm=True).eval()
    twin = benchmarks.torch_twin(ours, torch).eval()
    assert set(twin.state_dict()) - {k for k in twin.state_dict()
                                     if k.endswith("num_batches_tracked")} \
        == set(ours.state_dict()) - {k for k in ours.state_dict()
                                     if k.endswith("num_batches_tracked")}
    assert twin[0].bias is None and twin[9].bias is None
    x = rng.standard_normal((3, 1, 32, 32)).astype(numpy.float32)
    assert_close(twin(torch.from_numpy(x)).detach().numpy(), ours(x), 1e-4, 1e-5, "twin")


@pytest.mark.gpu
def test_batch_norm_lenet_without_biases_trains_the_same_on_the_device(rng):
    """The conv and linear layers without a bias, through the CUDA kernels."""
    _needs_cuda()
    x = rng.standard_normal((4, 1, 28, 28))
    y = rng.integers(0, 10, 4)
    results = {}
    for device in ("cpu", "cuda"):
        gpunet.set_device("cpu")
        gpunet.manual_seed(5)
        model = models.lenet5(batch_norm=True).to(device, dtype="float64")
        opt = optim.SGD(model.parameters(), 0.1)
        xd, yd = gpunet.to_device(x, device), gpunet.to_device(y, device)
        train.train_step(model, losses.SoftmaxCrossEntropy(), opt, xd, yd)
        results[device] = backend.to_numpy(model.eval()(xd))
    assert_close(results["cuda"], results["cpu"], 1e-9, 1e-10, "eval after a step")


# -- 9. bench --memory on a GPU measures device memory ----------------------------------------


@pytest.mark.gpu
def test_bench_memory_on_cuda_measures_the_device_pool(tiny_bench, monkeypatch, tmp_path,
                                                       capsys):
    _needs_cuda()
    if CUPY_DOUBLE:
        monkeypatch.setenv("GPUNET_KERNELS", "0")  # the emulator: far too slow for a step
    (row,) = benchmarks.memory(["alexnet_cifar_step"], with_torch=False, device="cuda:0")
    assert row["device"] == "cuda:0" and row["measure"] == "cupy"
    # at least what a step keeps on the device: conv1's output, 64 x 64 x 32 x 32 floats
    assert 16 <= row["extra_mb"] < 4000
    assert benchmarks.format_memory([row]).startswith(
        "peak memory: GPU memory held by CuPy's pool on cuda:0")
    assert cli.main(["bench", "--device", "cuda", "--rounds", "1", "--no-torch", "--memory",
                     "--images", "64", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "peak memory: GPU memory held by CuPy's pool on cuda:0" in out
    assert "resident" not in out


@pytest.mark.cupy_double
def test_the_doubles_pool_holds_freed_blocks_as_cupys_does():
    if not CUPY_DOUBLE:
        pytest.skip("the CuPy test double is not in use")
    import cupy
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    start = pool.used_bytes()
    a = cupy.zeros(1 << 20, dtype=cupy.float32)
    del a
    assert pool.used_bytes() == start and pool.total_bytes() == start + 4 * 2**20
    assert pool.free_bytes() == 4 * 2**20
    pool.free_all_blocks()
    assert pool.total_bytes() == start and pool.free_bytes() == 0
