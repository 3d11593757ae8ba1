"""One training step (forward, backward, SGD-momentum update, float32) of LeNet-5
(batch 128, 32x32x1) and of a CIFAR-sized AlexNet (batch 64, 32x32x3), gpunet and
PyTorch's CPU build side by side in one run. ``extra_info.images_per_s`` is what
the target compares (gpunet / PyTorch >= 1.0).
"""
import numpy
import pytest

import gpunet
from gpunet import losses, models, optim

WORKLOADS = {"lenet5": (models.lenet5, 128, (1, 32, 32)),
             "alexnet_cifar": (models.alexnet_cifar, 64, (3, 32, 32))}


def _torch_model(name, torch):
    nn = torch.nn
    if name == "lenet5":
        return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                             nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120),
                             nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    return nn.Sequential(
        nn.Conv2d(3, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 128, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(128, 192, 3, padding=1), nn.ReLU(), nn.Conv2d(192, 192, 3, padding=1), nn.ReLU(),
        nn.Conv2d(192, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(1152, 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU(), nn.Linear(192, 10))


def _batch(batch, shape):
    rng = numpy.random.default_rng(0)
    return rng.standard_normal((batch, *shape)).astype(numpy.float32), rng.integers(0, 10, batch)


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_gpunet_step(benchmark, name):
    gpunet.set_device("cpu")
    gpunet.manual_seed(0)
    make, batch, shape = WORKLOADS[name]
    model, loss = make(), losses.SoftmaxCrossEntropy()
    opt = optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)  # small: stays finite
    x, y = _batch(batch, shape)

    def step():
        opt.zero_grad()
        loss.forward(model.forward(x), y)
        model.backward(loss.backward(), input_grad=False)  # as torch: x needs no gradient
        opt.step()

    benchmark.pedantic(step, rounds=15, warmup_rounds=2)
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.mean


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_torch_step(benchmark, name):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    _, batch, shape = WORKLOADS[name]
    model = _torch_model(name, torch)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x, y = (torch.from_numpy(a) for a in _batch(batch, shape))
    loss = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()

    benchmark.pedantic(step, rounds=15, warmup_rounds=2)
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.mean
