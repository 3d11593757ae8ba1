"""Out of memory: evaluation at the training batch size (so that a GPU that trains also
validates), the epoch saved before validating, and a one-line message naming the
command, the phase, GPU or host, what the model needs and what to lower. Tests marked
``gpu`` run through the CuPy test double without a GPU (``GPUNET_CUPY_DOUBLE=1``),
where its pool's limit stands in for a small GPU."""
import numpy
import pytest

import gpunet
from gpunet import cli, losses, models, optim, train
from gpunet.cli import inspection
from gpunet.recipe import training as recipe_training

from .helpers import CUPY_DOUBLE, needs_cuda, one_gpunet_line

QUICK = ["--dataset", "synthetic", "--limit", "96", "--dev-size", "32", "--batch-size", "16",
         "--no-progress", "--seed", "1"]


@pytest.fixture
def small_gpu(monkeypatch):
    """``limit(extra_bytes)``: the double's pool refuses to grow more than this above
    what is held now, as a small GPU would; undone afterwards. The CUDA kernels run
    in the double's emulator, far too slow for whole epochs: the xp path runs."""
    needs_cuda()
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
    needs_cuda()
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
        line = one_gpunet_line(capsys.readouterr().err)
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


@pytest.mark.gpu
def test_cli_a_model_larger_than_the_gpu_is_named_before_the_first_step(small_gpu, capsys):
    small_gpu(2 * 2**20)  # AlexNet-CIFAR's parameters alone: 6 MB
    code = cli.main(["train", "--model", "alexnet_cifar", "--epochs", "1", "--device", "cuda",
                     "--out", "unused-out", *QUICK[:-2]])
    line = one_gpunet_line(capsys.readouterr().err)
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
    line = one_gpunet_line(capsys.readouterr().err)
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
    line = one_gpunet_line(capsys.readouterr().err)
    assert code == 1
    assert "train: out of host memory while training (epoch 1, step 1): Unable to " \
           "allocate 3.00 GiB" in line
    assert "lenet5 has 62,006 parameters" in line and "lower --batch-size (now 16)" in line
    assert "GPU" not in line and "--device cpu" not in line
