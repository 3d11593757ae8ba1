"""Gradient checks of every layer and loss in float64, and of gradcheck itself."""
import numpy
import pytest

import gpunet
from gpunet import losses, nn

from .helpers import gpunet_cli

LAYERS = {
    "linear": (lambda: nn.Linear(5, 4), (3, 5)),
    "conv": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 2, 5, 6)),
    "conv_same_even": (lambda: nn.Conv2d(2, 2, (2, 4), padding="same"), (2, 2, 4, 5)),
    "maxpool_3_2": (lambda: nn.MaxPool2d(3, 2, padding=1), (2, 2, 6, 5)),
    "avgpool": (lambda: nn.AvgPool2d(2, 1, padding=1), (2, 2, 4, 4)),
    "batchnorm2d": (lambda: nn.BatchNorm2d(3), (4, 3, 3, 2)),
    "batchnorm1d": (lambda: nn.BatchNorm1d(4), (5, 4)),
    "batchnorm2d_eval": (lambda: nn.BatchNorm2d(3).eval(), (2, 3, 3, 2)),
    "lrn": (lambda: nn.LocalResponseNorm(3, alpha=0.5, k=2.0), (2, 5, 3, 3)),
    "relu": (lambda: nn.ReLU(), (4, 6)),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), (4, 6)),
    "tanh": (lambda: nn.Tanh(), (4, 6)),
    "sigmoid": (lambda: nn.Sigmoid(), (4, 6)),
    "softmax": (lambda: nn.Softmax(), (4, 6)),
    "flatten": (lambda: nn.Flatten(), (2, 2, 3)),
    "dropout_eval": (lambda: nn.Dropout(0.5).eval(), (3, 4)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_passes_gradcheck(name, rng):
    make, shape = LAYERS[name]
    model = nn.Sequential(make())
    x = rng.standard_normal(shape)
    with_out = model.to(dtype="float64")(x)
    target = rng.standard_normal(with_out.shape)
    report = gpunet.gradcheck(model, losses.MSELoss(), x, target)
    assert report.max_rel_error < 1e-7, f"{name}\n{report}"
    assert "input" in report.checks


@pytest.mark.parametrize("loss,targets", [
    (losses.SoftmaxCrossEntropy(), numpy.array([0, 2, 1, 2])),
    (losses.SoftmaxCrossEntropy(), numpy.eye(3)[[1, 0, 2, 2]] * 0.8 + 0.2 / 3),
    (losses.BinaryCrossEntropy(), numpy.array([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 1, 0]])),
    (losses.MSELoss(), numpy.arange(12.0).reshape(4, 3) / 10),
], ids=["ce_labels", "ce_probabilities", "bce", "mse"])
def test_every_loss_passes_gradcheck(loss, targets, rng):
    model = nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 3))
    x = rng.standard_normal((4, 5))
    report = gpunet.gradcheck(model, loss, x, targets)
    assert report.max_rel_error < 1e-7, str(report)


def test_a_small_cnn_passes_gradcheck(rng):
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.LocalResponseNorm(3), nn.Conv2d(3, 2, 2),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8, 4))
    report = gpunet.gradcheck(model, losses.SoftmaxCrossEntropy(),
                              rng.standard_normal((3, 1, 6, 6)), numpy.array([0, 3, 1]))
    assert report.passed and report.verdict == "great", str(report)


class WrongLinear(nn.Linear):
    """A planted bug: the weight gradient is transposed the wrong way round (scaled)."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.weight.grad *= 1.5
        return dx


def test_a_wrong_backward_fails(rng):
    model = nn.Sequential(WrongLinear(4, 3))
    report = gpunet.gradcheck(model, losses.MSELoss(), rng.standard_normal((2, 4)),
                              rng.standard_normal((2, 3)))
    assert report.checks["0.weight"].rel_error > 1e-3
    assert report.checks["0.bias"].rel_error < 1e-7
    assert not report.passed and report.verdict == "bug"
    assert report.worst.name == "0.weight"
    assert "0.weight" in str(report)


def test_refuses_active_dropout_but_accepts_eval(rng):
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    x, y = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    with pytest.raises(ValueError, match="dropout"):
        gpunet.gradcheck(model, losses.MSELoss(), x, y)
    assert gpunet.gradcheck(model.eval(), losses.MSELoss(), x, y).passed


def test_includes_the_l2_term(rng):
    """Remember regularisation: the cost gets weight_decay/2 ||W||^2 and the analytic
    gradient weight_decay * W, exactly what the optimizers add, on every parameter."""
    model = nn.Sequential(nn.Linear(4, 3))
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 3))
    report = gpunet.gradcheck(model, losses.MSELoss(), x, y, weight_decay=0.3)
    assert report.passed, str(report)
    plain = gpunet.gradcheck(model, losses.MSELoss(), x, y)
    w = model[0].weight.data.astype("float64")
    for name, shift in (("0.weight", 0.3 * w), ("0.bias", numpy.zeros(3))):
        with_l2, without = report.checks[name], plain.checks[name]
        idx = with_l2.worst_index
        numeric_shift = with_l2.numeric - (
            without.numeric if without.worst_index == idx else numpy.nan)
        if without.worst_index == idx:
            assert numeric_shift == pytest.approx(shift[idx], abs=1e-6), name


def test_model_is_left_untouched_and_sampling(rng):
    model = nn.Sequential(nn.Linear(30, 20))
    before = model.state_dict()
    report = gpunet.gradcheck(model, losses.MSELoss(), rng.standard_normal((2, 30)).astype(
        "float32"), rng.standard_normal((2, 20)), max_per_param=15, params=["0.weight"],
        check_input=False)
    assert list(report.checks) == ["0.weight"] and report.checks["0.weight"].checked == 15
    assert all(p.data.dtype == numpy.float32 for p in model.parameters())
    assert all(numpy.array_equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="unknown parameter names"):
        gpunet.gradcheck(model, losses.MSELoss(), rng.standard_normal((2, 30)),
                         rng.standard_normal((2, 20)), params=["nope"])


class PhantomGrad(nn.Module):
    """y = x; claims a gradient for a parameter the output does not depend on."""

    def __init__(self, claimed):
        super().__init__()
        self.unused = nn.Parameter(numpy.zeros(3))
        self.claimed = claimed

    def forward(self, x):
        return x

    def backward(self, dy):
        self.unused.grad += self.claimed
        return dy


def test_zero_gradients_agree_but_a_phantom_one_is_caught(rng):
    x, y = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    honest = gpunet.gradcheck(nn.Sequential(PhantomGrad(0.0)), losses.MSELoss(), x, y)
    assert honest.checks["0.unused"].rel_error == 0.0 and honest.passed
    phantom = gpunet.gradcheck(nn.Sequential(PhantomGrad(1e-3)), losses.MSELoss(), x, y)
    # all of it is error, but for the rounding allowance of the differences
    assert phantom.checks["0.unused"].rel_error == pytest.approx(1.0, abs=1e-4)
    assert not phantom.passed


def test_gradcheck_passes_a_correct_model_with_tiny_gradients(capsys):
    from gpunet.cli import main
    assert main(["gradcheck", "alexnet_cifar", "--seed", "3"]) == 0  # was "suspicious"
    assert "great" in capsys.readouterr().out


def test_gradcheck_reports_unresolved_arrays_never_as_great():
    import gpunet
    from gpunet import losses, nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(numpy.full((1, 3), 1e-3))

        def forward(self, x):
            self.x = x
            return 1e-9 * (x @ self.weight.data.T)

        def backward(self, dy):  # wrong: no weight gradient
            return 1e-9 * dy @ self.weight.data

    rng = numpy.random.default_rng(0)
    report = gpunet.gradcheck(Tiny(), losses.MSELoss(), rng.standard_normal((4, 3)),
                              rng.standard_normal((4, 1)) + 10, check_input=False)
    assert report.unresolved == ["weight"]
    assert report.verdict == "unresolved"
    assert "unresolved" in str(report).splitlines()[1] and "great" not in str(report)


def test_gradcheck_of_a_correct_model_prints_a_bound_not_zero(tmp_path):
    done = gpunet_cli("gradcheck", "lenet5", "--device", "cpu")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "0.000e+00" not in done.stdout.split("max relative error")[0]


def test_gradcheck_with_a_large_eps_on_relu_and_pooling_names_the_kinks():
    done = gpunet_cli("gradcheck", "lenet5", "--device", "cpu", "--eps", "1e-3")
    assert "Traceback" not in done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("kinks: inputs within eps=0.001 of a ReLU or max-pool decision")
    assert "try a smaller eps" in last
