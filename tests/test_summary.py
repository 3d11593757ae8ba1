"""The summary's cost columns: multiply-adds and memory, as torchinfo counts them."""
import numpy
import pytest

from gpunet import models, nn
from gpunet.cli import main


def _conv_macs(c_in, c_out, k, out):
    return c_in * c_out * k * k * out * out


def test_resnet18_cifar_mult_adds_by_hand():
    """Stem 3->64 at 32x32; per stage two blocks of two 3x3 convolutions (the first
    strided) and, from stage 2, a 1x1 shortcut; batch norms count their 2C parameters
    once (torchinfo's rule), the head its weights and biases."""
    macs = _conv_macs(3, 64, 3, 32) + 64 * 2
    c_in, size = 64, 32
    for stage, width in enumerate((64, 128, 256, 512)):
        size = size if stage == 0 else size // 2
        macs += _conv_macs(c_in, width, 3, size) + 3 * _conv_macs(width, width, 3, size)
        macs += 4 * 2 * width
        if stage:
            macs += _conv_macs(c_in, width, 1, size) + 2 * width
        c_in = width
    macs += 512 * 10 + 10
    table = models.summary(models.resnet18_cifar(), (3, 32, 32), print_table=False,
                           batch_size=4)
    assert table.total_macs == 4 * macs == 4 * 555_432_330
    assert table.param_bytes == 4 * 11_173_962
    outputs = sum(r.size for r in table.rows)
    assert table.activation_bytes == 2 * 4 * 4 * outputs
    assert table.input_bytes == 4 * 4 * 3 * 32 * 32


@pytest.mark.torch
def test_costs_match_torch_forward_hooks():
    """Each leaf's output size, parameters and multiply-adds against the same counts
    taken by forward hooks on the PyTorch twin (torchinfo's rule applied to it)."""
    torch = pytest.importorskip("torch")
    from gpunet.benchmarks import torch_twin
    model = models.lenet5(batch_norm=True)
    twin = torch_twin(model, torch).eval()
    seen = []

    def hook(module, _, out):
        params = sum(p.numel() for p in module.parameters())
        spatial = int(numpy.prod(out.shape[2:])) if isinstance(module, torch.nn.Conv2d) else 1
        seen.append((out[0].numel(), params, params * spatial))

    for m in twin.modules():
        if not list(m.children()):
            m.register_forward_hook(hook)
    twin(torch.zeros(1, 1, 32, 32))
    table = models.summary(model, (1, 32, 32), print_table=False)
    assert [(r.size, r.params, r.macs) for r in table.rows] == seen


def test_summary_opens_blocks_that_are_not_sequential():
    block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BasicBlock(4, 8, stride=2))
    table = models.summary(block, (3, 9, 9), print_table=False)
    assert [r.name for r in table.rows] == [
        "0", "1.conv1", "1.bn1", "1.relu1", "1.conv2", "1.bn2", "1.downsample.0",
        "1.downsample.1", "1.relu2"]
    assert table.rows[-1].shape == (8, 4, 4)


def test_cli_summary_batch_norm_and_batch_size(capsys):
    assert main(["summary", "lenet5", "--batch-norm", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "BatchNorm2d" in out and "total parameters: 61,932" in out
    assert "forward mult-adds at batch 32:" in out
    assert "forward/backward pass size (MB)" in out and "params size (MB): 0.25" in out
    assert main(["summary", "resnet18_cifar"]) == 0
    out = capsys.readouterr().out
    assert "total parameters: 11,173,962" in out and "555,432,330" in out
    assert main(["summary", "vgg_cifar", "--batch-norm"]) == 2
    assert "--batch-norm applies to lenet5 only" in capsys.readouterr().err


def test_the_summary_keeps_no_activations():
    """The summary's forward saves contexts for a backward that never comes; kept,
    they held the model's activations (on a GPU, memory a later step needed)."""
    from gpunet import models
    model = models.lenet5(batch_norm=True)
    models.summary(model, (1, 28, 28), print_table=False)
    assert all(getattr(m, "_ctx", None) is None for m in model.modules())



@pytest.mark.parametrize("model, shape, message", [
    # it raised Conv2d's "input must be 4-D (N, C, H, W), got shape (1, 28, 28)"
    (models.lenet5, (28, 28), "input_shape: expected (C, H, W) with C = 1 for the first "
                              "layer (0: InputConv(1, 6"),
    (models.lenet5, (3, 28, 28), "input_shape: expected (C, H, W) with C = 1"),
    (lambda: nn.Sequential(nn.Linear(4, 3)), (5,),
     "input_shape: expected (..., 4) for the first layer (0: Linear("),
], ids=["no-channels", "channels", "linear"])
def test_summary_names_input_shape_when_the_first_layer_cannot_take_it(model, shape, message):
    with pytest.raises(ValueError) as info:
        models.summary(model(), shape, print_table=False)
    assert str(info.value).startswith(message) and str(info.value).endswith(f"got {shape}")


@pytest.mark.parametrize("shape", ["abc", (1, 0, 28), (), (1.5, 28, 28), None])
def test_summary_refuses_an_input_shape_that_is_no_shape(shape):
    with pytest.raises(ValueError, match="^input_shape: expected one example's shape"):
        models.summary(models.lenet5(), shape, print_table=False)
