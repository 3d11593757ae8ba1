"""Model layouts, parameter counts and the summary table."""
import inspect
import math

import numpy
import pytest

import gpunet
from gpunet import backend, cli, losses, models, nn, optim, train
from gpunet.io import CheckpointError

from .helpers import assert_close, needs_cuda


def n_params(model):
    return sum(int(p.data.size) for p in model.parameters())


def shapes_of(make):
    """``make()`` built under ``init.shapes_only()``: names and shapes, no weights."""
    with gpunet.init.shapes_only():
        return make()


def test_shapes_only_builds_the_same_parameters_without_memory():
    for make in (lambda: models.lenet5(batch_norm=True), models.alexnet_cifar):
        real, light = make(), shapes_of(make)
        assert [(k, p.shape) for k, p in light.named_parameters()] == \
            [(k, p.shape) for k, p in real.named_parameters()]
        assert [(k, b.shape) for k, b in light.named_buffers()] == \
            [(k, b.shape) for k, b in real.named_buffers()]
        assert n_params(light) == n_params(real)
        assert list(light.state_dict()) == list(real.state_dict())
        assert all(set(p.data.strides) == {0} for p in light.parameters())  # no memory
        assert not any(p.data.flags.writeable for p in light.parameters())
    assert n_params(models.lenet5()) == 61_706  # materialised: the init path itself still runs


def test_published_parameter_counts():
    assert n_params(shapes_of(models.alexnet)) == 61_100_840
    assert n_params(shapes_of(lambda: models.alexnet(lrn=True))) == 61_100_840
    assert n_params(shapes_of(models.lenet5)) == 61_706


def test_alexnet_on_two_gpus_has_the_papers_parameter_count():
    """models.alexnet(groups=2): the paper's widths, conv2, conv4 and conv5 in two
    groups: 60,965,224 parameters, as the summary states; torchvision's keys."""
    model = shapes_of(lambda: models.alexnet(groups=2))
    assert n_params(model) == 60_965_224
    assert [k for k, _ in model.named_parameters()] == \
        [k for k, _ in shapes_of(models.alexnet).named_parameters()]
    convs = [m for m in model.modules() if isinstance(m, gpunet.nn.Conv2d)]
    assert [m.groups for m in convs] == [1, 2, 1, 2, 2]
    assert [m.weight.shape for m in convs] == [(96, 3, 11, 11), (256, 48, 5, 5),
                                               (384, 256, 3, 3), (384, 192, 3, 3),
                                               (256, 192, 3, 3)]
    with pytest.raises(ValueError, match="groups: expected 1 .* or 2 .*, got 3"):
        models.alexnet(groups=3)


def test_summary_of_the_two_gpu_alexnet(capsys):
    table = models.summary(models.alexnet(num_classes=1000, groups=2), (3, 224, 224))
    assert table.total_params == 60_965_224
    assert "total parameters: 60,965,224" in capsys.readouterr().out
    conv2 = [row for row in table.rows if row.kind == "Conv2d"][1]
    assert conv2.shape == (256, 27, 27)
    # a grouped layer's mult-adds: K (C / groups) R S per output pixel, bias aside
    assert conv2.macs == (256 * 48 * 25 + 256) * 27 * 27


def test_vgg16_parameter_count_and_keys():
    model = shapes_of(models.vgg16)
    assert n_params(model) == 138_357_544
    keys = [k for k, _ in model.named_parameters()]  # state_dict's keys: VGG-16 has no buffers
    assert not list(model.named_buffers())
    assert keys[:2] == ["features.0.weight", "features.0.bias"]
    assert keys[-2:] == ["classifier.6.weight", "classifier.6.bias"]
    assert "features.28.weight" in keys  # torchvision's index of the last conv


def test_alexnet_keys_are_torchvisions():
    model = shapes_of(models.alexnet)
    assert not list(model.named_buffers())  # so the parameters' names are state_dict's keys
    keys = [k for k, _ in model.named_parameters()]
    assert keys == ["features.0.weight", "features.0.bias", "features.3.weight",
                    "features.3.bias", "features.6.weight", "features.6.bias",
                    "features.8.weight", "features.8.bias", "features.10.weight",
                    "features.10.bias", "classifier.1.weight", "classifier.1.bias",
                    "classifier.4.weight", "classifier.4.bias", "classifier.6.weight",
                    "classifier.6.bias"]


def test_the_notes_lenet_table_has_wrong_parameter_counts():
    """The notes print 208, 416, 48,001, 10,081 and 841: they drop each filter's input
    channels (5*5*8 + 8 = 208 instead of 5*5*3*8 + 8 = 608) and miscount the FC biases.
    Activation shapes and sizes in the table are right."""
    table = models.summary(models.lenet5_notes(), (3, 32, 32), print_table=False)
    with_params = [r for r in table.rows if r.params]
    assert [r.params for r in with_params] == [608, 3216, 48120, 10164, 850]
    assert [r.params for r in with_params] != [208, 416, 48001, 10081, 841]
    assert table.total_params == 62_958
    shapes = [(r.kind, r.shape, r.size) for r in table.rows if r.kind != "ReLU"]
    assert shapes[:4] == [("InputConv", (8, 28, 28), 6272), ("MaxPool2d", (8, 14, 14), 1568),
                          ("Conv2d", (16, 10, 10), 1600), ("MaxPool2d", (16, 5, 5), 400)]
    assert [r.size for r in table.rows[-5:] if r.kind == "Linear"] == [120, 84, 10]


def test_summary_prints_the_table(capsys):
    models.summary(models.lenet5(), (1, 32, 32))
    out = capsys.readouterr().out
    assert "activation shape" in out and "total parameters: 61,706" in out
    assert "input" in out and "1,024" in out


def test_lenet5_accepts_28_and_32_pixel_images(rng):
    model = models.lenet5()
    for size in (28, 32):
        x = rng.standard_normal((2, 1, size, size)).astype("float32")
        y = model(x)
        assert y.shape == (2, 10)
        assert model.backward(numpy.ones_like(y)).shape == x.shape
    with pytest.raises(ValueError):
        model(rng.standard_normal((2, 1, 30, 30)).astype("float32"))


@pytest.mark.parametrize("make,shape", [(models.alexnet_cifar, (2, 3, 32, 32)),
                                        (models.vgg_cifar, (2, 3, 32, 32)),
                                        (lambda: models.lenet5(batch_norm=True), (3, 1, 28, 28))])
def test_cifar_models_run_forward_and_backward(make, shape, rng):
    model = make()
    x = rng.standard_normal(shape).astype("float32")
    y = model(x)
    assert y.shape == (shape[0], 10)
    assert model.backward(numpy.ones_like(y)).shape == x.shape


def test_alexnet_with_lrn_has_local_response_norm():
    kinds = [type(m).__name__ for m in shapes_of(lambda: models.alexnet(lrn=True)).modules()]
    assert kinds.count("LocalResponseNorm") == 2


def test_adaptive_avg_pool_matches_torch_windows(rng):
    pool = gpunet.nn.AdaptiveAvgPool2d((3, 2))
    x = rng.standard_normal((1, 2, 7, 5))
    y = pool(x)
    # PyTorch's windows: rows [0,3), [2,5), [4,7); cols [0,3), [2,5)
    assert y[0, 1, 1, 0] == pytest.approx(x[0, 1, 2:5, 0:3].mean())
    assert y[0, 0, 2, 1] == pytest.approx(x[0, 0, 4:7, 2:5].mean())
    report = gpunet.gradcheck(gpunet.nn.Sequential(pool), gpunet.losses.MSELoss(), x,
                              rng.standard_normal(y.shape))
    assert report.passed, str(report)


@pytest.mark.torch
def test_adaptive_avg_pool_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 13, 9))
    for out in [(6, 6), (7, 7), (4, 3), (13, 9), (1, 1)]:
        ours = gpunet.nn.AdaptiveAvgPool2d(out)(x)
        ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), out).numpy()
        assert numpy.allclose(ours, ref, rtol=1e-12, atol=1e-12), out


@pytest.mark.parametrize("name,kwargs,shape", [
    ("lenet5", {}, (32, 1, 28, 28)), ("lenet5", {"batch_norm": True}, (32, 1, 28, 28)),
    ("lenet5_notes", {}, (32, 3, 32, 32)), ("alexnet_cifar", {}, (32, 3, 32, 32)),
    ("vgg_cifar", {}, (32, 3, 32, 32)), ("vgg_cifar", {"batch_norm": False}, (32, 3, 32, 32)),
    ("alexnet", {"num_classes": 10, "lrn": True}, (4, 3, 224, 224))], ids=str)
def test_shipped_models_start_near_chance(name, kwargs, shape):
    """On standardised input, the first loss of every shipped model is near ln(10),
    the loss of a uniform guess (plain He everywhere started at 2.9 to 9: each max
    pool grew the signal three to five times, and the head was He-initialised)."""
    data = numpy.random.default_rng(7)
    for seed in range(2):
        gpunet.manual_seed(seed)
        model = models.MODELS[name](**kwargs)
        x = data.standard_normal(shape).astype("float32")
        value = losses.SoftmaxCrossEntropy()(model(x), data.integers(0, 10, shape[0]))
        assert abs(value - math.log(10)) < 0.6, (seed, value)


def test_the_second_moment_of_a_relu_after_max_pooling():
    """What :mod:`gpunet.models.scaling` divides by, against a Monte Carlo estimate."""
    from gpunet.models.scaling import relu_of_max_moment
    z = numpy.random.default_rng(0).standard_normal((400_000, 9))
    assert relu_of_max_moment(1) == pytest.approx(0.5, abs=1e-9)
    for window in (4, 9):
        sampled = numpy.mean(numpy.maximum(z[:, :window].max(axis=1), 0) ** 2)
        assert relu_of_max_moment(window) == pytest.approx(sampled, rel=1e-2)


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


@pytest.mark.parametrize("sync", [False, True], ids=["batch-norm", "sync-batch-norm"])
def test_an_old_checkpoint_with_biases_before_batch_norm_loads_the_same_model(tmp_path, rng,
                                                                              sync):
    """Also into a model whose batch norms were converted to SyncBatchNorm (a batch
    norm too: its running mean takes the folded bias)."""
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
    if sync:
        new = nn.convert_sync_batchnorm(new)
    gpunet.load(path, new)
    x = rng.standard_normal((5, 1, 28, 28)).astype(numpy.float32)
    assert_close(new.eval()(x), old.eval()(x), 1e-5, 1e-5, "eval outputs")
    with pytest.raises(CheckpointError, match=r"old\.npz: saved by an older gpunet with a "
                                              r"bias before each batch norm \(0\.bias, "):
        gpunet.load(path, models.lenet5(batch_norm=True),
                    optim.Adam(models.lenet5(batch_norm=True).parameters()))


@pytest.mark.gpu
def test_batch_norm_lenet_without_biases_trains_the_same_on_the_device(rng):
    """The conv and linear layers without a bias, through the CUDA kernels."""
    needs_cuda()
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
