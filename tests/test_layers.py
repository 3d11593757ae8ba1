"""Linear, activations, dropout, flatten, and the Module machinery."""
import numpy
import pytest

import gpunet
from gpunet import nn
from gpunet.backend import to_numpy

from .helpers import assert_close


def test_linear_is_x_times_w_transpose_plus_b(xp, rng):
    layer = nn.Linear(4, 3)
    assert layer.weight.shape == (3, 4) and layer.bias.shape == (3,)
    layer.bias.data[...] = xp.asarray([1.0, 2.0, 3.0])
    x = rng.standard_normal((5, 4)).astype("float32")
    w = to_numpy(layer.weight.data)
    assert_close(layer(xp.asarray(x)), x @ w.T + [1, 2, 3], 1e-6, 1e-6)
    dy = rng.standard_normal((5, 3)).astype("float32")
    dx = layer.backward(xp.asarray(dy))
    assert_close(dx, dy @ w, 1e-6, 1e-6, "dx")
    assert_close(layer.weight.grad, dy.T @ x, 1e-5, 1e-6, "dW")
    assert_close(layer.bias.grad, dy.sum(0), 1e-6, 1e-6, "db")


def test_linear_accepts_leading_axes(rng):
    layer = nn.Linear(4, 2)
    x = rng.standard_normal((3, 5, 4)).astype("float32")
    y = layer(x)
    assert y.shape == (3, 5, 2)
    assert layer.backward(numpy.ones_like(y)).shape == x.shape


@pytest.mark.parametrize("layer,fn,dfn", [
    (nn.ReLU(), lambda x: numpy.maximum(x, 0), lambda x: (x > 0) * 1.0),
    (nn.LeakyReLU(0.1), lambda x: numpy.where(x > 0, x, 0.1 * x),
     lambda x: numpy.where(x > 0, 1.0, 0.1)),
    (nn.Tanh(), numpy.tanh, lambda x: 1 - numpy.tanh(x) ** 2),
    (nn.Sigmoid(), lambda x: 1 / (1 + numpy.exp(-x)),
     lambda x: numpy.exp(-x) / (1 + numpy.exp(-x)) ** 2),
], ids=["relu", "leaky", "tanh", "sigmoid"])
def test_activations(xp, layer, fn, dfn, rng):
    x = rng.standard_normal((3, 7)) * 3
    assert_close(layer(xp.asarray(x)), fn(x), 1e-12, 1e-12, "y")
    dy = rng.standard_normal(x.shape)
    assert_close(layer.backward(xp.asarray(dy)), dy * dfn(x), 1e-12, 1e-12, "dx")


def test_sigmoid_does_not_overflow():
    y = nn.Sigmoid()(numpy.array([-1000.0, 0.0, 1000.0], "float32"))
    assert_close(y, [0, 0.5, 1], 0, 1e-7)


def test_softmax_layer_rows_sum_to_one_and_backward(rng):
    x = rng.standard_normal((4, 5))
    layer = nn.Softmax()
    s = layer(x)
    assert_close(s.sum(axis=1), numpy.ones(4), 1e-12, 1e-12)
    dy = rng.standard_normal(x.shape)
    jac = [numpy.diag(r) - numpy.outer(r, r) for r in s]
    assert_close(layer.backward(dy), [j @ d for j, d in zip(jac, dy)], 1e-12, 1e-12)


def test_flatten_round_trip(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype("float32")
    f = nn.Flatten()
    assert f(x).shape == (2, 60)
    assert f.backward(f(x)).shape == x.shape


# -- dropout -------------------------------------------------------------------------
def test_dropout_statistics_and_mask(xp):
    """Inverted dropout: about p of the units are zeroed, the others scaled by
    1/keep_prob, so the expected activation is unchanged."""
    drop = nn.Dropout(0.3)
    x = xp.ones((200, 500), dtype="float32")
    y = to_numpy(drop(x))
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    assert_close(y[kept], numpy.full(kept.sum(), 1 / 0.7), 1e-6, 0)
    assert abs(y.mean() - 1.0) < 0.02
    dy = to_numpy(drop.backward(xp.ones_like(x)))
    assert ((dy != 0) == kept).all(), "backward must use the forward's mask"


def test_dropout_masks_change_and_are_seeded():
    x = numpy.ones((4, 100), "float32")
    drop = nn.Dropout(0.5)
    gpunet.manual_seed(7)
    a, b = drop(x), drop(x)
    assert not numpy.array_equal(a, b)
    gpunet.manual_seed(7)
    assert numpy.array_equal(drop(x), a)


def test_dropout_is_identity_in_eval_and_at_p0():
    """Quiz: at test time, no dropout and no 1/keep_prob factor."""
    x = numpy.arange(12, dtype="float32").reshape(3, 4)
    assert numpy.array_equal(nn.Dropout(0.5).eval()(x), x)
    assert numpy.array_equal(nn.Dropout(0.0)(x), x)
    assert not nn.Dropout(1.0)(x).any()


# -- the Module machinery --------------------------------------------------------------
def _lenet_like():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8, 3))


def test_state_dict_keys_are_pytorchs():
    keys = list(_lenet_like().state_dict())
    assert keys == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                    "1.running_var", "1.num_batches_tracked", "5.weight", "5.bias"]


@pytest.mark.torch
def test_weights_port_both_ways_with_torch(rng):
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2),
                                 torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                 torch.nn.Linear(8, 3))
    ours = _lenet_like()
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x = rng.standard_normal((2, 1, 6, 6)).astype("float32")
    assert_close(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), 1e-5, 1e-5)
    ours2 = _lenet_like()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours2.state_dict().items()})
    assert_close(ours2(x), theirs(torch.from_numpy(x)).detach().numpy(), 1e-5, 1e-5)


def test_load_state_dict_lists_every_problem_and_changes_nothing():
    model = _lenet_like()
    before = model.state_dict()
    bad = dict(before)
    del bad["0.bias"]
    bad["9.weight"] = numpy.zeros(3)
    bad["5.weight"] = numpy.zeros((3, 9))
    bad["0.weight"] = numpy.ones_like(before["0.weight"])
    with pytest.raises(ValueError) as info:
        model.load_state_dict(bad)
    message = str(info.value)
    for fragment in ("0.bias", "9.weight", "5.weight", "(3, 8)", "(3, 9)"):
        assert fragment in message
    for key, value in model.state_dict().items():
        assert numpy.array_equal(value, before[key]), key


def test_load_state_dict_casts_to_the_modules_dtype():
    model = _lenet_like()
    state = {k: v.astype("float64") if v.dtype.kind == "f" else v
             for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert all(p.data.dtype == numpy.float32 for p in model.parameters())


def test_to_dtype_casts_parameters_grads_and_buffers():
    model = _lenet_like().to(dtype="float64")
    for p in model.parameters():
        assert p.data.dtype == p.grad.dtype == numpy.float64
    assert model[1].running_var.dtype == numpy.float64
    assert model[1].num_batches_tracked.dtype == numpy.int64
    with pytest.raises(TypeError, match="float32 or float64"):
        model.to(dtype="int32")


def test_train_eval_children_modules_and_indexing():
    model = _lenet_like()
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules())
    assert len(list(model.children())) == 6 == len(model)
    assert list(model.modules())[0] is model and len(list(model.modules())) == 7
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[-1], nn.Linear)
    assert len(model[1:3]) == 2
    assert [type(m).__name__ for m in model][:2] == ["Conv2d", "BatchNorm2d"]


class Scale(nn.Module):
    """A custom layer, written as a user would: y = a * x."""

    def __init__(self, n):
        super().__init__()
        self.a = nn.Parameter(numpy.linspace(0.5, 2.0, n).astype("float32"))

    def forward(self, x):
        self.x = x
        return x * self.a.data

    def backward(self, dy):
        self.a.grad += (dy * self.x).sum(axis=0)
        return dy * self.a.data


def test_custom_layer_trains_saves_and_gradchecks(rng):
    model = nn.Sequential(nn.Linear(3, 4), Scale(4), nn.Tanh(), nn.Linear(4, 2))
    assert "1.a" in model.state_dict()
    x = rng.standard_normal((6, 3)).astype("float32")
    y = rng.integers(0, 2, 6)
    loss = gpunet.losses.SoftmaxCrossEntropy()
    report = gpunet.gradcheck(model, loss, x, y)
    assert report.passed, str(report)
    opt = gpunet.optim.SGD(model.parameters(), lr=0.5)
    first = loss(model(x), y)
    for _ in range(30):
        opt.zero_grad()
        loss(model(x), y)
        model.backward(loss.backward())
        opt.step()
    assert loss(model(x), y) < first


def test_forgetting_super_init_is_explained():
    class Broken(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(numpy.zeros(2, "float32"))

    with pytest.raises(AttributeError, match="super"):
        Broken()


def test_backward_before_forward_is_explained():
    with pytest.raises(RuntimeError, match="without a forward before it"):
        nn.Linear(2, 2).backward(numpy.zeros((1, 2), "float32"))


def test_backward_lets_go_of_the_saved_activations():
    """Forward saves what one backward needs; backward releases it, so a network's
    activations are freed layer by layer during backward (peak memory), and a
    second backward without a forward is refused rather than silently reusing it."""
    layer = nn.Conv2d(2, 3, 3)
    layer(numpy.ones((1, 2, 5, 5), "float32"))
    assert layer._ctx is not None
    layer.backward(numpy.ones((1, 3, 3, 3), "float32"))
    assert layer._ctx is None
    with pytest.raises(RuntimeError, match="each forward feeds one backward"):
        layer.backward(numpy.ones((1, 3, 3, 3), "float32"))


def test_initialisers_have_the_notes_variances():
    gpunet.manual_seed(0)
    shape = (400, 300, 3, 3)
    fan_in, fan_out = 300 * 9, 400 * 9
    for name, var in [("he", 2 / fan_in), ("xavier", 1 / fan_in),
                      ("glorot", 2 / (fan_in + fan_out))]:
        w = gpunet.init.initialize(name, shape)
        assert abs(w.mean()) < 1e-3 and abs(w.var() / var - 1) < 0.01, name
    assert not gpunet.init.initialize("zeros", (3, 4)).any()
    custom = gpunet.init.initialize(lambda s, fi, fo, r: numpy.full(s, fi), (2, 5))
    assert (custom == 5).all()
    with pytest.raises(ValueError, match="returned shape"):
        gpunet.init.initialize(lambda s, fi, fo, r: numpy.zeros(3), (2, 5))
    with pytest.raises(ValueError, match="init"):
        nn.Linear(2, 3, init="uniform")


def test_manual_seed_reproduces_initialisation():
    gpunet.manual_seed(3)
    a = _lenet_like().state_dict()
    gpunet.manual_seed(3)
    b = _lenet_like().state_dict()
    assert all(numpy.array_equal(a[k], b[k]) for k in a)


def test_biases_start_at_zero_and_do_not_decay():
    layer = nn.Conv2d(2, 3, 3)
    assert not layer.bias.data.any()
    assert layer.weight.decay and not layer.bias.decay
    bn = nn.BatchNorm2d(3)
    assert not bn.weight.decay and not bn.bias.decay


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(3, 2, 3, stride=2, padding=1),
                                  lambda: nn.MaxPool2d(3, 2, 1), lambda: nn.AvgPool2d(2),
                                  lambda: nn.BatchNorm2d(3), lambda: nn.LocalResponseNorm(2)])
def test_non_contiguous_inputs_give_the_same_results(make, rng):
    base = rng.standard_normal((5, 8, 6, 3)).astype("float32")
    strided = base.transpose(0, 3, 1, 2)[:, :, ::2, :]  # (5, 3, 4, 6), a strided view
    assert not strided.flags.c_contiguous
    dense = numpy.ascontiguousarray(strided)
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    ya, yb = a(strided), b(dense)
    assert_close(ya, yb, 1e-6, 1e-6, "y")  # reductions may sum in another order
    dy = rng.standard_normal(ya.shape[:-1] + (2 * ya.shape[-1],)).astype("float32")[..., ::2]
    assert_close(a.backward(dy), b.backward(numpy.ascontiguousarray(dy)), 1e-6, 1e-6, "dx")


def test_optimizer_state_follows_module_to():
    """Module.to casts parameters; the optimizer's state follows on the next step."""
    model = nn.Linear(3, 2)
    opt = gpunet.optim.Adam(model.parameters(), 0.1)
    model.weight.grad += 1
    opt.step()
    model.to(dtype="float64")
    model.weight.grad += 1
    opt.step()
    assert all(v.dtype == numpy.float64 for s in opt.state for v in s.values())
    assert model.weight.data.dtype == numpy.float64


def test_a_layer_instance_cannot_sit_twice_in_a_sequential():
    relu = nn.ReLU()
    with pytest.raises(ValueError, match="same ReLU instance is added twice"):
        nn.Sequential(nn.Linear(2, 2), relu, nn.Linear(2, 2), relu)


def test_backward_without_the_input_gradient_gives_the_same_parameter_gradients(rng):
    def run(input_grad):
        gpunet.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
        x = numpy.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype("float32")
        y = model(x)
        dx = model.backward(numpy.ones_like(y), input_grad=input_grad)
        return dx, [p.grad.copy() for p in model.parameters()]

    dx, full = run(True)
    none, partial = run(False)
    assert dx.shape == (2, 2, 4, 4) and none is None
    assert all(numpy.array_equal(a, b) for a, b in zip(full, partial))
    lin = nn.Sequential(nn.Linear(3, 2))
    lin(numpy.ones((1, 3), "float32"))
    assert lin.backward(numpy.ones((1, 2), "float32"), input_grad=False) is None


@pytest.mark.parametrize("pool", [(2,), (3, 2, 1)])
def test_max_pool_then_relu_equals_relu_then_max_pool(xp, pool):
    """The shipped models run max pooling before the ReLU (on fewer values); that
    must change no value and no gradient: not for all-negative windows, nor for
    ties, nor at the input, whose gradient includes both layers."""
    rng = numpy.random.default_rng(1)
    x = rng.integers(-2, 3, (3, 2, 9, 9)).astype("float64")  # small integers: tied maxima
    x[0] = 0.0  # with a bias of -0.5, the first image's windows are all negative
    weight = rng.integers(-1, 2, (3, 2, 3, 3)).astype("float64")
    x = xp.asarray(x)
    results = []
    for middle in ((nn.ReLU(), nn.MaxPool2d(*pool)), (nn.MaxPool2d(*pool), nn.ReLU())):
        model = nn.Sequential(nn.Conv2d(2, 3, 3), *middle, nn.Flatten()).to(dtype="float64")
        model[0].bias.data[...] = -0.5
        model[0].weight.data[...] = xp.asarray(weight)
        y = model(x)
        dx = model.backward(xp.asarray(numpy.random.default_rng(2).standard_normal(y.shape)))
        results.append((y, dx, *(p.grad for p in model.parameters())))
    for a, b in zip(*results):
        assert xp.array_equal(a, b)
    dx = results[0][1]
    assert float(xp.abs(dx[0]).max()) == 0.0 and float(xp.abs(dx[1]).max()) > 0.0
