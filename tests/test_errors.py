"""Bad input is rejected with a ValueError/TypeError naming the argument and
showing expected and actual, never a broadcasting traceback from deep inside."""
import warnings

import numpy
import pytest

from gpunet import losses, models, nn, ops

f32 = numpy.float32


def z(*shape, dtype=f32):
    return numpy.zeros(shape, dtype=dtype)


LAYER_CASES = [
    # (layer factory, input, exception, message fragments)
    ("conv rank", lambda: nn.Conv2d(3, 4, 3), z(3, 8, 8), ValueError,
     ["4-D", "(N, C, H, W)", "(3, 8, 8)"]),
    ("conv channels", lambda: nn.Conv2d(3, 4, 3), z(2, 1, 8, 8), ValueError,
     ["3 channels", "got 1", "(2, 1, 8, 8)"]),
    ("conv kernel > padded input", lambda: nn.Conv2d(1, 1, 5, padding=1), z(1, 1, 2, 2),
     ValueError, ["kernel height 5", "padded input height 4"]),
    ("conv integer input", lambda: nn.Conv2d(1, 1, 3), z(1, 1, 5, 5, dtype="int64"),
     TypeError, ["input", "float32 or float64", "int64"]),
    ("conv float64 into float32", lambda: nn.Conv2d(1, 1, 3), z(1, 1, 5, 5, dtype="float64"),
     TypeError, ["float64", "float32"]),
    ("linear features", lambda: nn.Linear(4, 2), z(3, 5), ValueError,
     ["(..., 4)", "(3, 5)"]),
    ("linear uint8", lambda: nn.Linear(4, 2), z(3, 4, dtype="uint8"), TypeError, ["uint8"]),
    ("pool rank", lambda: nn.MaxPool2d(2), z(4, 4), ValueError, ["4-D", "(4, 4)"]),
    ("pool window > input", lambda: nn.AvgPool2d(3), z(1, 1, 2, 5), ValueError,
     ["kernel height 3", "padded input height 2"]),
    ("batchnorm channels", lambda: nn.BatchNorm2d(3), z(2, 4, 5, 5), ValueError,
     ["C=3", "(2, 4, 5, 5)"]),
    ("batchnorm1d rank", lambda: nn.BatchNorm1d(3), z(2, 3, 4, 4), ValueError,
     ["(N, C) or (N, C, L)"]),
    ("lrn rank", lambda: nn.LocalResponseNorm(3), z(2, 3), ValueError, ["3-D", "(2, 3)"]),
    ("relu ints", lambda: nn.ReLU(), z(2, 3, dtype="int32"), TypeError, ["int32"]),
    ("flatten 1-D", lambda: nn.Flatten(), z(3), ValueError, ["(3,)"]),
    ("softmax dim", lambda: nn.Softmax(dim=3), z(2, 3), ValueError, ["dim 3", "(2, 3)"]),
    ("not an array", lambda: nn.Tanh(), [[1.0, 2.0]], TypeError, ["must be an array", "list"]),
    ("lenet5 not an array", lambda: models.lenet5(), [[1.0]], TypeError,
     ["Conv2d(1, 6", "input must be an array", "list"]),
]


@pytest.mark.parametrize("name,make,x,error,fragments", LAYER_CASES,
                         ids=[c[0] for c in LAYER_CASES])
def test_layer_rejects_bad_input(xp, name, make, x, error, fragments):
    """The same exception and message on NumPy and (where a GPU answers) CuPy."""
    x = xp.asarray(x) if isinstance(x, numpy.ndarray) else x
    with pytest.raises(error) as info:
        make()(x)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"


CONSTRUCTOR_CASES = [
    ("stride 0", lambda: nn.Conv2d(1, 1, 3, stride=0), ["stride", "positive", "0"]),
    ("negative padding", lambda: nn.Conv2d(1, 1, 3, padding=-1), ["padding", "-1"]),
    ("same with stride 2", lambda: nn.Conv2d(1, 1, 3, stride=2, padding="same"),
     ["'same'", "stride 1", "(2, 2)"]),
    ("unknown padding", lambda: nn.Conv2d(1, 1, 3, padding="full"), ["padding", "'full'"]),
    ("kernel 0", lambda: nn.Conv2d(1, 1, 0), ["kernel_size", "0"]),
    ("kernel triple", lambda: nn.Conv2d(1, 1, (1, 2, 3)), ["kernel_size", "pair"]),
    ("channels 0", lambda: nn.Conv2d(0, 1, 3), ["in_channels", "0"]),
    ("float features", lambda: nn.Linear(2.5, 3), ["in_features", "2.5"]),
    ("pool stride -1", lambda: nn.MaxPool2d(2, stride=-1), ["stride", "-1"]),
    ("dropout p", lambda: nn.Dropout(1.5), ["p", "[0, 1]", "1.5"]),
    ("bn momentum", lambda: nn.BatchNorm2d(3, momentum=2), ["momentum", "2"]),
    ("bn eps", lambda: nn.BatchNorm2d(3, eps=0), ["eps", "0"]),
    ("lrn size", lambda: nn.LocalResponseNorm(0), ["size", "0"]),
]


@pytest.mark.parametrize("name,make,fragments", CONSTRUCTOR_CASES,
                         ids=[c[0] for c in CONSTRUCTOR_CASES])
def test_constructor_rejects_bad_hyperparameters(name, make, fragments):
    with pytest.raises(ValueError) as info:
        make()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"


def test_backward_with_a_wrong_gradient_shape():
    conv = nn.Conv2d(1, 2, 3)
    conv(z(2, 1, 5, 5))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 2, 3, 3\), got \(2, 2, 3, 4\)"):
        conv.backward(z(2, 2, 3, 4))
    pool = nn.MaxPool2d(2)
    pool(z(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 1, 2, 2\)"):
        pool.backward(z(1, 1, 3, 3))
    lin = nn.Linear(3, 2)
    lin(z(4, 3))
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 2\)"):
        lin.backward(z(4, 3))


def test_ops_name_mismatched_weight_and_dtype():
    with pytest.raises(ValueError, match="x has 2 channels .* weight expects 3"):
        ops.conv2d_forward(z(1, 2, 5, 5), z(4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\), got \(3,\)"):
        ops.conv2d_forward(z(1, 3, 5, 5), z(4, 3, 3, 3), z(3))
    with pytest.raises(TypeError, match="weight is float64 but x is float32"):
        ops.conv2d_forward(z(1, 3, 5, 5), z(4, 3, 3, 3, dtype="float64"))


LOSS_CASES = [
    (losses.SoftmaxCrossEntropy, z(0, 3), numpy.zeros(0, "int64"), ValueError, "non-empty batch"),
    (losses.MSELoss, z(3, 2), z(2, 2), ValueError, "batch sizes differ"),
    (losses.SoftmaxCrossEntropy, z(3, 4), numpy.array([0, 9, 1]), ValueError, "label 9"),
    (losses.BinaryCrossEntropy, z(3, 1), z(3, 2), ValueError, "outputs' shape"),
]


@pytest.mark.parametrize("make,out,target,error,match", LOSS_CASES,
                         ids=["empty", "batch", "label", "bce-shape"])
def test_losses_reject_bad_input(xp, make, out, target, error, match):
    with pytest.raises(error, match=match):
        make()(xp.asarray(out), xp.asarray(target))


def test_batch_norm_rejects_an_empty_or_single_batch(xp):
    with pytest.raises(ValueError, match="more than one value per channel"):
        nn.BatchNorm1d(3)(xp.zeros((0, 3), "float32"))


def test_layers_name_what_they_cannot_take():
    torch = pytest.importorskip("torch")
    layer = nn.Linear(3, 2)
    with pytest.raises(TypeError, match=r"must be an array .NumPy or CuPy., got torch.Tensor "
                                        r".a PyTorch tensor: pass t.numpy\(\)."):
        layer(torch.zeros(2, 3))
    with pytest.raises(TypeError, match=r"input is big-endian float32 \(>f4\)"):
        layer(numpy.zeros((2, 3), dtype=">f4"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(numpy.zeros((2, 3), dtype="float32"))
