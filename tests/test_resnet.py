"""Composition beyond a chain: ModuleList, ModuleDict, the residual BasicBlock and
ResNet-18 for CIFAR, against PyTorch (a twin built by hand here) and by gradcheck."""
import os
import subprocess
import sys

import numpy
import pytest

import gpunet
from gpunet import losses, models, nn
from tests.helpers import assert_close

EPS32 = float(numpy.finfo(numpy.float32).eps)


# -- containers -----------------------------------------------------------------------------
def test_module_list_registers_its_members_under_torch_names():
    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(3, 4), nn.ReLU()])
            self.layers.append(nn.Linear(4, 2))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

        def backward(self, dy):
            for layer in reversed(list(self.layers)):
                dy = layer.backward(dy)
            return dy

    tower = Tower()
    assert list(tower.state_dict()) == ["layers.0.weight", "layers.0.bias",
                                        "layers.2.weight", "layers.2.bias"]
    assert len(tower.layers) == 3 and isinstance(tower.layers[-1], nn.Linear)
    assert len(tower.parameters()) == 4
    tower.layers[1] = nn.Tanh()
    assert isinstance(tower.layers[1], nn.Tanh) and len(tower.layers) == 3
    report = gpunet.gradcheck(tower.to(dtype="float64"), losses.MSELoss(),
                              numpy.random.default_rng(0).standard_normal((3, 3)),
                              numpy.zeros((3, 2)))
    assert report.passed, report
    with pytest.raises(TypeError, match="expected a Module"):
        tower.layers.append(3)
    with pytest.raises(NotImplementedError, match="ModuleList has no forward"):
        tower.layers(numpy.zeros((1, 3)))


def test_module_dict_keeps_insertion_order_and_torch_keys():
    heads = nn.ModuleDict({"cls": nn.Linear(4, 10), "box": nn.Linear(4, 4, bias=False)})
    heads["aux"] = nn.Linear(4, 1)
    assert heads.keys() == ["cls", "box", "aux"] and "box" in heads and len(heads) == 3
    assert list(heads.state_dict()) == ["cls.weight", "cls.bias", "box.weight",
                                        "aux.weight", "aux.bias"]
    del heads["box"]
    assert list(heads) == ["cls", "aux"] and len(heads.parameters()) == 4
    with pytest.raises(KeyError):
        heads["box"]
    with pytest.raises(ValueError, match="key must be a non-empty string without"):
        heads["a.b"] = nn.ReLU()
    torch = pytest.importorskip("torch")
    twin = torch.nn.ModuleDict({"cls": torch.nn.Linear(4, 10), "aux": torch.nn.Linear(4, 1)})
    assert list(twin.state_dict()) == list(heads.state_dict())


# -- the residual block -----------------------------------------------------------------------
@pytest.mark.parametrize("in_planes, planes, stride", [(4, 4, 1), (3, 5, 2), (4, 6, 1)])
def test_basic_block_passes_gradcheck(in_planes, planes, stride):
    """Identity (4->4) and 1x1-conv + batch-norm shortcuts (3->5 stride 2, 4->6):
    every parameter and the input, in training mode (batch statistics)."""
    gpunet.manual_seed(0)
    block = nn.BasicBlock(in_planes, planes, stride)
    assert (block.downsample is None) == (in_planes == planes and stride == 1)
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((3, in_planes, 5, 5))
    y = rng.standard_normal((3, planes, *(2 * (-(-5 // stride),))))
    report = gpunet.gradcheck(block, losses.MSELoss(), x, y)
    assert report.passed, report


def test_basic_block_backward_adds_the_two_paths():
    """With the residual path's last batch norm at gamma = beta = 0, F(x) = 0: the block
    is relu(x) and the gradient reaches x through the identity alone."""
    block = nn.BasicBlock(2, 2).to(dtype="float64")
    block.bn2.weight.data[...] = 0.0
    x = numpy.random.default_rng(0).standard_normal((2, 2, 4, 4))
    y = block(x)
    assert_close(y, numpy.maximum(x, 0), 0, 1e-15)
    dy = numpy.ones_like(x)
    assert_close(block.backward(dy), (x > 0) * 1.0, 0, 1e-15)


# -- ResNet-18 against PyTorch ------------------------------------------------------------
def _torch_resnet18_cifar(torch):
    """ResNet-18 for CIFAR written out in PyTorch, as torchvision writes its blocks."""
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self, inp, planes, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(inp, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inp != planes:
                self.downsample = tnn.Sequential(tnn.Conv2d(inp, planes, 1, stride, bias=False),
                                                 tnn.BatchNorm2d(planes))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU()
            widths, inp = [64, 128, 256, 512], 64
            for i, planes in enumerate(widths):
                stride = 1 if i == 0 else 2
                setattr(self, f"layer{i + 1}", tnn.Sequential(Block(inp, planes, stride),
                                                              Block(planes, planes, 1)))
                inp = planes
            self.avgpool = tnn.AdaptiveAvgPool2d(1)
            self.fc = tnn.Linear(512, 10)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet()


def test_resnet18_cifar_has_the_published_parameter_count_and_torch_keys():
    model = models.resnet18_cifar()
    assert sum(p.data.size for p in model.parameters()) == 11_173_962
    assert "resnet18_cifar" in models.MODELS
    keys = list(model.state_dict())
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight",
                "layer1.1.bn2.bias", "layer2.0.downsample.0.weight",
                "layer4.1.conv2.weight", "fc.weight", "fc.bias"):
        assert key in keys
    assert not any("layer1.0.downsample" in k for k in keys)
    torch = pytest.importorskip("torch")
    twin = _torch_resnet18_cifar(torch)
    assert keys == list(twin.state_dict())
    assert sum(p.numel() for p in twin.parameters()) == 11_173_962


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_resnet18_cifar_matches_its_torch_twin(dtype):
    """Train mode (batch statistics): outputs, every parameter's gradient, the input
    gradient and the updated running statistics, after loading gpunet's state dict
    into the hand-built torch model. float64 to 1e-10; float32 against the float64
    twin within 20 layers x sqrt(4608) (the longest dot product) x eps32, relative
    to each array's largest entry, times a factor 8 for batch norm's division by
    batch standard deviations of a batch of 2."""
    torch = pytest.importorskip("torch")
    gpunet.manual_seed(0)
    model = models.resnet18_cifar().to(dtype=dtype)
    twin = _torch_resnet18_cifar(torch).double()
    twin.load_state_dict({k: torch.from_numpy(numpy.asarray(v, numpy.float64)
                                              if v.dtype.kind == "f" else v)
                          for k, v in model.state_dict().items()})
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((2, 3, 32, 32))
    dy = rng.standard_normal((2, 10))
    tol = 1e-10 if dtype == "float64" else 8 * 20 * 4608 ** 0.5 * EPS32

    y = model(x.astype(dtype))
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = twin(tx)
    ty.backward(torch.from_numpy(dy))
    dx = model.backward(dy.astype(dtype))

    def close(ours, theirs, what):
        theirs = theirs.detach().numpy()
        assert_close(ours, theirs, 0, tol * max(numpy.abs(theirs).max(), 1e-30), what)

    close(y, ty, "output")
    close(dx, tx.grad, "input gradient")
    grads = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        close(p.grad, grads[name].grad, name + " gradient")
    buffers = dict(twin.named_buffers())
    for name, b in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert int(b) == int(buffers[name])
        else:
            close(b, buffers[name], name)


def test_summary_shows_resnet18_cifar():
    table = models.summary(models.resnet18_cifar(), (3, 32, 32), print_table=False)
    assert table.total_params == 11_173_962
    names = [r.name for r in table.rows]
    assert "layer2.0.downsample.0" in names and "layer4.1.conv2" in names
    assert names[-1] == "fc" and table.rows[-1].shape == (10,)


@pytest.mark.slow
def test_train_resnet18_cifar_end_to_end_on_the_cpu(tmp_path):
    env = {**os.environ, "GPUNET_DEVICE": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "gpunet", "train", "--model", "resnet18_cifar", "--dataset",
         "synthetic", "--limit", "24", "--batch-size", "8", "--epochs", "1", "--out", str(out),
         "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout
    assert (out / "last.npz").exists()
