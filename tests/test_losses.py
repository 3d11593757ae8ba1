"""Losses: values, gradients (already divided by the batch), stability, errors."""
import numpy
import pytest

from gpunet import losses, ops

from .helpers import assert_close


def test_softmax_of_the_notes_example():
    z = numpy.array([5.0, 2.0, -1.0, 3.0])
    assert_close(ops.softmax(z), [0.842, 0.042, 0.002, 0.114], 0, 5e-4)
    assert_close(numpy.exp(z[:3]).sum(), 156.2, 0, 0.05)  # the 3-class slide


def test_cross_entropy_labels_and_one_hot_agree(xp, rng):
    z = rng.standard_normal((5, 4))
    y = numpy.array([0, 3, 1, 1, 2])
    loss = losses.SoftmaxCrossEntropy()
    value = loss(xp.asarray(z), xp.asarray(y))
    p = numpy.exp(z) / numpy.exp(z).sum(1, keepdims=True)
    assert value == pytest.approx(-numpy.log(p[numpy.arange(5), y]).mean(), rel=1e-12)
    one_hot = numpy.eye(4)[y]
    assert_close(loss.backward(), (p - one_hot) / 5, 1e-12, 1e-12, "dz = (y_hat - y) / N")
    assert loss(xp.asarray(z), xp.asarray(one_hot)) == pytest.approx(value, rel=1e-12)
    assert_close(loss.backward(), (p - one_hot) / 5, 1e-12, 1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    z = numpy.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]])
    y = numpy.array([0, 2])
    l32 = losses.SoftmaxCrossEntropy()
    v32 = l32(z.astype("float32"), y)
    l64 = losses.SoftmaxCrossEntropy()
    v64 = l64(z, y)
    assert numpy.isfinite(v32) and abs(v32 - v64) < 1e-6
    assert v64 == pytest.approx(numpy.log(2) / 2)
    assert numpy.isfinite(l32.backward()).all()


def test_binary_cross_entropy_on_logits(rng):
    z = rng.standard_normal((6, 1)) * 5
    y = rng.integers(0, 2, (6, 1)).astype("float64")
    loss = losses.BinaryCrossEntropy()
    p = 1 / (1 + numpy.exp(-z))
    expected = -(y * numpy.log(p) + (1 - y) * numpy.log(1 - p)).mean()
    assert loss(z, y) == pytest.approx(expected, rel=1e-10)
    assert_close(loss.backward(), (p - y) / 6, 1e-12, 1e-12)
    assert numpy.isfinite(loss(numpy.array([[1e4], [-1e4]]), numpy.array([[0.0], [1.0]])))


def test_mse(rng):
    o, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss = losses.MSELoss()
    assert loss(o, t) == pytest.approx(((o - t) ** 2).mean())
    assert_close(loss.backward(), 2 * (o - t) / 12, 1e-12, 1e-12)


@pytest.mark.parametrize("logits,targets,error,match", [
    (numpy.zeros((3, 4)), numpy.array([0, 4, 1]), ValueError, "label 4 is out of range"),
    (numpy.zeros((3, 4)), numpy.array([0, -1, 1]), ValueError, "label -1 is out of range"),
    (numpy.array([[0.0, numpy.nan]]), numpy.array([0]), ValueError, "NaN or Inf.*index \\(0, 1\\)"),
    (numpy.zeros((3, 4)), numpy.array([0, 1]), ValueError, "batch sizes differ"),
    (numpy.zeros((3, 4), "int64"), numpy.array([0, 1, 2]), TypeError, "float32 or float64"),
    (numpy.zeros((3, 4)), numpy.zeros((3, 5)), ValueError, "logits' shape"),
    (numpy.zeros((3, 4)), numpy.array(["a", "b", "c"]), TypeError, "integer labels"),
    (numpy.zeros(4), numpy.array([1]), ValueError, "batch sizes differ|2-D"),
])
def test_cross_entropy_errors(logits, targets, error, match):
    with pytest.raises(error, match=match):
        losses.SoftmaxCrossEntropy()(logits, targets)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        losses.MSELoss().backward()
