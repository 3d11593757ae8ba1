"""SoftmaxCrossEntropy with weight, ignore_index, label_smoothing and reduction, as
torch.nn.CrossEntropyLoss: forward and backward."""
import itertools
import math

import numpy
import pytest

import gpunet
from gpunet import losses, nn
from tests.helpers import assert_close

EPS32 = float(numpy.finfo(numpy.float32).eps)
N, C = 7, 5
WEIGHT = numpy.array([0.5, 2.0, 1.0, 0.25, 3.0])
# ignore_index applies to labels only (PyTorch's rule)
CASES = [case for case in itertools.product([None, "weight"], [-100, 2], [0.0, 0.2],
                                            ["mean", "sum", "none"], ["labels", "probabilities"])
         if case[-1] == "labels" or case[1] == -100]


def _targets(kind, rng):
    if kind == "labels":
        labels = rng.integers(0, C, N)
        labels[[1, 4]] = 2  # ignored when ignore_index=2
        return labels
    p = rng.random((N, C))
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("weight, ignore_index, smoothing, reduction, kind", CASES)
def test_matches_torch_cross_entropy(weight, ignore_index, smoothing, reduction, kind, dtype):
    """float64 to 1e-10; float32 within 8 C eps32 of the largest value: each loss is a
    log-sum-exp (C terms) and a weighted sum of C log-probabilities, each rounded once."""
    torch = pytest.importorskip("torch")
    rng = numpy.random.default_rng(0)
    z = 3 * rng.standard_normal((N, C))
    y = _targets(kind, rng)
    w = None if weight is None else WEIGHT
    ours = losses.SoftmaxCrossEntropy(
        weight=None if w is None else w.astype(dtype), ignore_index=ignore_index,
        label_smoothing=smoothing, reduction=reduction)
    theirs = torch.nn.CrossEntropyLoss(
        weight=None if w is None else torch.from_numpy(w), ignore_index=ignore_index,
        label_smoothing=smoothing, reduction=reduction)
    tz = torch.from_numpy(z).requires_grad_(True)
    tl = theirs(tz, torch.from_numpy(y))
    dl = rng.standard_normal(N)
    tl.backward(torch.from_numpy(dl) if reduction == "none" else None)

    value = ours.forward(z.astype(dtype), y.astype(dtype) if kind != "labels" else y)
    dz = ours.backward(dl.astype(dtype)) if reduction == "none" else ours.backward()
    tol = 1e-10 if dtype == "float64" else 8 * C * EPS32
    expected = tl.detach().numpy()
    if reduction == "none":
        assert value.shape == (N,) and value.dtype == dtype
        assert_close(value, expected, 0, tol * numpy.abs(expected).max(), "losses")
        if ignore_index == 2 and kind == "labels":
            assert (value[[1, 4]] == 0).all()
    else:
        assert isinstance(value, float)
        assert abs(value - float(expected)) <= tol * abs(float(expected))
    grad = tz.grad.numpy()
    assert dz.dtype == dtype
    assert_close(dz, grad, 0, tol * numpy.abs(grad).max(), "logits gradient")


def test_mean_with_weights_divides_by_the_weights_of_the_rows_kept():
    z = numpy.zeros((3, 2))  # every log-probability is log(1/2)
    y = numpy.array([0, 1, 1])
    loss = losses.SoftmaxCrossEntropy(weight=numpy.array([1.0, 3.0]), ignore_index=0)
    assert math.isclose(loss(z, y), math.log(2), rel_tol=1e-15)  # (3 + 3) log 2 / (3 + 3)
    all_ignored = losses.SoftmaxCrossEntropy(ignore_index=1)
    assert math.isnan(all_ignored(z, numpy.array([1, 1, 1])))  # 0 / 0, as PyTorch


def test_plain_cross_entropy_is_unchanged():
    rng = numpy.random.default_rng(3)
    z, y = rng.standard_normal((4, 3)), numpy.array([0, 2, 1, 2])
    loss = losses.SoftmaxCrossEntropy()
    log_p = z - numpy.log(numpy.exp(z).sum(axis=1, keepdims=True))
    assert math.isclose(loss(z, y), -log_p[range(4), y].mean(), rel_tol=1e-14)
    expected = numpy.exp(log_p)
    expected[range(4), y] -= 1
    assert_close(loss.backward(), expected / 4, 0, 1e-16)


def test_a_weighted_smoothed_loss_passes_gradcheck():
    gpunet.manual_seed(0)
    model = nn.Linear(4, 5).to(dtype="float64")
    rng = numpy.random.default_rng(1)
    y = numpy.array([0, 3, 4, 3, 1])
    loss = losses.SoftmaxCrossEntropy(weight=WEIGHT, ignore_index=3, label_smoothing=0.1)
    report = gpunet.gradcheck(model, loss, rng.standard_normal((5, 4)), y)
    assert report.passed, report


@pytest.mark.parametrize("kwargs, message", [
    ({"reduction": "avg"}, "reduction: expected one of"),
    ({"label_smoothing": 1.5}, "label_smoothing: expected a number in"),
    ({"weight": numpy.ones((2, 2))}, "weight must be 1-D"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        losses.SoftmaxCrossEntropy(**kwargs)


def test_bad_labels_and_weight_sizes_are_named():
    z = numpy.zeros((2, 3))
    with pytest.raises(ValueError, match="label 3 is out of range for 3 classes"):
        losses.SoftmaxCrossEntropy()(z, numpy.array([0, 3]))
    assert losses.SoftmaxCrossEntropy(ignore_index=7)(z, numpy.array([0, 7])) > 0
    with pytest.raises(ValueError, match="one entry per class"):
        losses.SoftmaxCrossEntropy(weight=numpy.ones(4))(z, numpy.array([0, 1]))
    none = losses.SoftmaxCrossEntropy(reduction="none")
    none(z, numpy.array([0, 1]))
    with pytest.raises(ValueError, match="needs dloss"):
        none.backward()


@pytest.mark.torch
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("labels, w", [
    ([-100, -100, -100], None),
    ([-100, -100, -100], numpy.array([0.0, 2.0, 3.0])),
    ([0, -100, 0], numpy.array([0.0, 2.0, 3.0])),  # the rows kept weigh 0
], ids=["all-ignored", "all-ignored-weighted", "rest-weighs-zero"])
def test_rows_of_zero_total_weight_as_torch(labels, w, reduction, smoothing):
    """Every row ignored: the mean is 0/0 (NaN) but the gradient 0, the sum 0 with
    gradient 0. Rows kept whose weights sum to 0: NaN gradient on them under "mean"."""
    torch = pytest.importorskip("torch")
    z = numpy.random.default_rng(2).standard_normal((3, 3))
    y = numpy.array(labels)
    ours = losses.SoftmaxCrossEntropy(weight=w, label_smoothing=smoothing, reduction=reduction)
    tz = torch.from_numpy(z).requires_grad_(True)
    tl = torch.nn.functional.cross_entropy(
        tz, torch.from_numpy(y), weight=None if w is None else torch.from_numpy(w),
        label_smoothing=smoothing, reduction=reduction)
    tl.backward()
    value, grad = ours(z, y), ours.backward()
    expected, expected_grad = tl.item(), tz.grad.numpy()
    assert math.isnan(value) == math.isnan(expected)
    assert math.isnan(value) or math.isclose(value, expected, rel_tol=1e-12, abs_tol=1e-15)
    assert numpy.array_equal(numpy.isnan(grad), numpy.isnan(expected_grad)), (grad, expected_grad)
    finite = ~numpy.isnan(expected_grad)
    assert_close(grad[finite], expected_grad[finite], 1e-12, 1e-15, "logits gradient")
