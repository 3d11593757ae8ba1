"""Losses: values, gradients (already divided by the batch), stability, errors."""
import numpy
import pytest

from gpunet import backend, losses, ops

from .helpers import CUPY_DOUBLE, assert_close


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


@pytest.mark.parametrize("targets, message", [
    (numpy.array([[0], [2]]), r"targets must be in \[0, 1\], got 2 at index \(1, 0\)"),
    (numpy.array([[0], [-1]]), r"targets must be in \[0, 1\], got -1 at index \(1, 0\)"),
    (numpy.array([[0.5], [numpy.nan]]), r"targets must be in \[0, 1\], got nan at index"),
    (numpy.array([[1.0], [1.5]], "float32"), r"targets must be in \[0, 1\], got 1.5 at index"),
])
def test_binary_cross_entropy_targets_must_be_in_the_unit_interval(targets, message):
    with pytest.raises(ValueError, match="BinaryCrossEntropy: " + message):
        losses.BinaryCrossEntropy()(numpy.zeros((2, 1), "float32"), targets)


def test_binary_cross_entropy_takes_soft_and_bool_targets():
    loss = losses.BinaryCrossEntropy()
    z = numpy.zeros((2, 1))
    assert loss(z, numpy.array([[True], [False]])) == pytest.approx(numpy.log(2))
    assert loss(z, numpy.array([[0.0], [1.0]])) == pytest.approx(numpy.log(2))
    assert loss(numpy.ones((2, 1)), numpy.array([[0.25], [0.25]])) == pytest.approx(
        numpy.log1p(numpy.exp(-1)) + 0.75)


@pytest.mark.parametrize("loss, outputs, targets", [
    (losses.MSELoss(), numpy.zeros((2, 3), "float32"), numpy.full((2, 3), numpy.nan)),
    (losses.MSELoss(), numpy.zeros((2, 3)), numpy.array([[0, 1, 2], [3, numpy.inf, 0.0]])),
    (losses.SoftmaxCrossEntropy(), numpy.zeros((2, 3), "float32"),
     numpy.full((2, 3), numpy.nan, "float32")),
    (losses.SoftmaxCrossEntropy(label_smoothing=0.1), numpy.zeros((2, 3)),
     numpy.array([[0.5, 0.5, 0.0], [0.0, numpy.nan, 1.0]])),
])
def test_nan_or_inf_in_float_targets_is_named(loss, outputs, targets):
    first = tuple(int(i) for i in numpy.argwhere(~numpy.isfinite(targets))[0])
    with pytest.raises(ValueError, match=rf"{type(loss).__name__}: targets contain NaN or "
                                         rf"Inf \(first at index \({first[0]}, {first[1]}\)"):
        loss(outputs, targets)


def test_nan_outputs_are_named_before_bad_targets():
    with pytest.raises(ValueError, match="logits contain NaN"):
        losses.BinaryCrossEntropy()(numpy.array([[numpy.nan]]), numpy.array([[2]]))


CASES_FOR_TRANSFERS = [
    # (loss, targets, host transfers in forward + backward): one for every check
    # together, then the loss value (and, for weighted means, the divisor)
    (losses.SoftmaxCrossEntropy, numpy.array([0, 3, 1, 1, 2]), 3),
    (losses.SoftmaxCrossEntropy, numpy.eye(4)[[0, 3, 1, 1, 2]], 2),
    (losses.BinaryCrossEntropy, numpy.eye(4)[[0, 3, 1, 1, 2]], 2),
    (losses.MSELoss, numpy.eye(4)[[0, 3, 1, 1, 2]], 2),
]


@pytest.mark.gpu
@pytest.mark.skipif(not CUPY_DOUBLE, reason="counts transfers on the CuPy test double "
                    "(GPUNET_CUPY_DOUBLE=1)")
@pytest.mark.parametrize("loss_class, targets, transfers", CASES_FOR_TRANSFERS)
def test_target_checks_add_no_host_transfer(monkeypatch, loss_class, targets, transfers):
    """Each transfer waits for the device, once per training step: the target checks
    share the one the check of the outputs takes."""
    import cupy
    backend.set_device("cuda")
    z = cupy.asarray(numpy.random.default_rng(0).standard_normal((5, 4)))
    y = cupy.asarray(targets)
    counted = []
    for method in ("__bool__", "__float__", "__int__", "item", "tolist", "get"):
        original = getattr(cupy.ndarray, method)
        monkeypatch.setattr(cupy.ndarray, method,
                            lambda self, *a, _f=original, _m=method, **k:
                            counted.append(_m) or _f(self, *a, **k))
    loss = loss_class()
    loss(z, y)
    loss.backward()
    assert len(counted) == transfers, counted
