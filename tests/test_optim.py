"""Optimizers against hand-computed updates; schedules against the notes' table."""
import numpy
import pytest

import gpunet
from gpunet import nn, optim
from gpunet.optim import schedules

from .helpers import assert_close

GRADS = [numpy.array([0.5, -1.0]), numpy.array([0.25, 2.0]), numpy.array([-1.0, 0.5])]


def _run(make, grads=GRADS, w0=(1.0, 2.0)):
    p = nn.Parameter(numpy.array(w0), decay=False)
    opt = make([p])
    trace = []
    for g in grads:
        p.grad[...] = g
        opt.step()
        trace.append(p.data.copy())
    return trace


def test_plain_sgd():
    trace = _run(lambda ps: optim.SGD(ps, lr=0.1))
    assert_close(trace[0], [1 - 0.05, 2 + 0.1], 0, 1e-15)
    assert_close(trace[2], [1 - 0.1 * (0.5 + 0.25 - 1), 2 - 0.1 * (-1 + 2 + 0.5)], 0, 1e-15)


def test_sgd_momentum_pytorch_semantics():
    """buf = g on the first step, then buf = mu buf + (1 - dampening) g."""
    mu, lr = 0.9, 0.1
    w, buf = numpy.array([1.0, 2.0]), None
    expected = []
    for g in GRADS:
        buf = g.copy() if buf is None else mu * buf + g
        w = w - lr * buf
        expected.append(w)
    assert_close(_run(lambda ps: optim.SGD(ps, lr=lr, momentum=mu))[-1], expected[-1], 0, 1e-15)
    # nesterov: step with g + mu * buf
    w, buf = numpy.array([1.0, 2.0]), None
    for g in GRADS:
        buf = g.copy() if buf is None else mu * buf + g
        w = w - lr * (g + mu * buf)
    assert_close(_run(lambda ps: optim.SGD(ps, lr=lr, momentum=mu, nesterov=True))[-1], w, 0,
                 1e-15)


def test_momentum_is_the_notes_form():
    beta, lr = 0.9, 0.1
    v, w = numpy.zeros(2), numpy.array([1.0, 2.0])
    for g in GRADS:
        v = beta * v + (1 - beta) * g
        w = w - lr * v
    assert_close(_run(lambda ps: optim.Momentum(ps, lr=lr, beta=beta))[-1], w, 0, 1e-15)
    # SGD with dampening = momentum matches it from the second step on, given the same start
    trace = _run(lambda ps: optim.SGD(ps, lr=lr, momentum=beta, dampening=beta))
    assert_close(trace[0], numpy.array([1.0, 2.0]) - lr * GRADS[0], 0, 1e-15)


def test_rmsprop():
    beta, lr, eps = 0.9, 0.01, 1e-8
    s, w = numpy.zeros(2), numpy.array([1.0, 2.0])
    for g in GRADS:
        s = beta * s + (1 - beta) * g ** 2
        w = w - lr * g / (numpy.sqrt(s) + eps)
    assert_close(_run(lambda ps: optim.RMSProp(ps, lr=lr, beta=beta, eps=eps))[-1], w, 0, 1e-15)


@pytest.mark.torch
def test_rmsprop_is_torch_rmsprop_with_alpha_beta():
    torch = pytest.importorskip("torch")
    t = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.RMSprop([t], lr=0.01, alpha=0.9, eps=1e-8)
    for g in GRADS:
        t.grad = torch.from_numpy(g)
        opt.step()
    assert_close(_run(lambda ps: optim.RMSProp(ps, lr=0.01, beta=0.9))[-1],
                 t.detach().numpy(), 1e-12, 1e-14)


def test_adam_bias_correction_uses_the_step_power():
    b1, b2, lr, eps = 0.9, 0.999, 0.1, 1e-8
    m, v, w = numpy.zeros(2), numpy.zeros(2), numpy.array([1.0, 2.0])
    slip = w.copy()  # the notes' typo: divide by (1 - beta) instead of (1 - beta^t)
    ms, vs = numpy.zeros(2), numpy.zeros(2)
    for t, g in enumerate(GRADS, start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1 ** t)) / (numpy.sqrt(v / (1 - b2 ** t)) + eps)
        ms, vs = b1 * ms + (1 - b1) * g, b2 * vs + (1 - b2) * g * g
        slip = slip - lr * (ms / (1 - b1)) / (numpy.sqrt(vs / (1 - b2)) + eps)
    trace = _run(lambda ps: optim.Adam(ps, lr=lr))
    assert_close(trace[-1], w, 0, 1e-14)
    assert numpy.abs(trace[-1] - slip).max() > 1e-3, "the notes' slip must not be what we do"
    # the first step is lr * sign(g) in size, the point of bias correction
    assert_close(trace[0], numpy.array([1.0, 2.0]) - lr * numpy.sign(GRADS[0]), 0, 1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adam_wd"])
def test_optimizers_match_torch(name):
    torch = pytest.importorskip("torch")
    ours_make, theirs_make = {
        "sgd": (lambda ps: optim.SGD(ps, 0.1), lambda ps: torch.optim.SGD(ps, 0.1)),
        "momentum": (lambda ps: optim.SGD(ps, 0.1, momentum=0.8, dampening=0.3),
                     lambda ps: torch.optim.SGD(ps, 0.1, momentum=0.8, dampening=0.3)),
        "nesterov": (lambda ps: optim.SGD(ps, 0.1, momentum=0.8, nesterov=True),
                     lambda ps: torch.optim.SGD(ps, 0.1, momentum=0.8, nesterov=True)),
        "adam": (lambda ps: optim.Adam(ps, 0.01), lambda ps: torch.optim.Adam(ps, 0.01)),
        "adam_wd": (lambda ps: optim.Adam(ps, 0.01, weight_decay=0.1),
                    lambda ps: torch.optim.Adam(ps, 0.01, weight_decay=0.1)),
    }[name]
    p = nn.Parameter(numpy.array([[1.0, 2.0]]))  # 2-D: a weight, so it decays
    ours = ours_make([p])
    t = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    theirs = theirs_make([t])
    for g in GRADS:
        p.grad[...] = g
        ours.step()
        t.grad = torch.from_numpy(g[None].copy())
        theirs.step()
    assert_close(p.data, t.detach().numpy(), 1e-12, 1e-14)


@pytest.mark.parametrize("name", ["SGD", "Momentum", "RMSProp", "Adam", "AdamW"])
def test_weight_decay_skips_biases_and_batch_norm_vectors(name):
    """API.md: weight_decay is L2 on the weights, biases and batch-norm parameters
    excluded (unlike torch.optim), in every group and every optimizer, AdamW's
    decoupled decay too; ``Parameter.decay = True`` decays a bias as well."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    for p in model.parameters():
        p.data[...] = 1.0
    model[0].bias.decay = True
    opt = getattr(optim, name)(model.parameters(), lr=0.1, weight_decay=0.5)
    opt.step()  # all grads are zero: only the decay moves anything
    for key, p in model.named_parameters():
        moved = not numpy.all(p.data == 1.0)
        assert moved == (key in ("0.weight", "0.bias")), (name, key, p.data)


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, 0.1, momentum=0.9), lambda ps: optim.Momentum(ps, 0.1),
    lambda ps: optim.RMSProp(ps, 0.1), lambda ps: optim.Adam(ps, 0.1)])
def test_state_dict_round_trip_continues_identically(make):
    p1 = nn.Parameter(numpy.array([1.0, 2.0]))
    p2 = nn.Parameter(numpy.array([1.0, 2.0]))
    a, b = make([p1]), make([p2])
    p1.grad[...] = GRADS[0]
    a.step()
    b.load_state_dict(a.state_dict())
    p2.data[...] = p1.data
    for g in GRADS[1:]:
        p1.grad[...] = p2.grad[...] = g
        a.step()
        b.step()
    assert numpy.array_equal(p1.data, p2.data)


def test_load_state_dict_mismatch_changes_nothing():
    p = nn.Parameter(numpy.zeros(2))
    opt = optim.Adam([p], 0.1)
    with pytest.raises(ValueError, match="2 entries but the optimizer has 1"):
        opt.load_state_dict({"state": [{}, {}]})
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\]"):
        opt.load_state_dict({"state": [{"exp_avg": numpy.zeros(3)}]})
    assert opt.steps == 0 and opt.state == [{}]


@pytest.mark.parametrize("make,match", [
    (lambda ps: optim.SGD(ps, lr=-1), "lr"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "nesterov"),
    (lambda ps: optim.Adam(ps, beta1=1.0), "beta1"),
    (lambda ps: optim.RMSProp(ps, 0.1, beta=-0.1), "beta"),
    (lambda ps: optim.Momentum(ps, 0.1, weight_decay=-1), "weight_decay"),
    (lambda ps: optim.SGD([], 0.1), "empty"),
    (lambda ps: optim.SGD([numpy.zeros(2)], 0.1), "Parameter"),
])
def test_hyperparameters_are_validated(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make([nn.Parameter(numpy.zeros(2))])


def test_optimizer_accepts_a_module_and_zero_grad_clears():
    model = nn.Linear(2, 2)
    opt = optim.SGD(model, 0.1)
    model.weight.grad += 1
    opt.zero_grad()
    assert not model.weight.grad.any()


# -- schedules -----------------------------------------------------------------------
def _lrs(make, epochs=4, a0=0.2):
    opt = optim.SGD([nn.Parameter(numpy.zeros(1))], lr=a0)
    sched = make(opt)
    out = []
    for _ in range(epochs):
        sched.step()
        out.append(sched.lr)
    assert opt.lr == sched.lr
    return out


def test_inverse_time_decay_matches_the_notes_table():
    """a0 = 0.2, decay_rate = 1 -> 0.1, 0.067, 0.05, 0.04 (the notes print 0.67 and
    0.4 for epochs 2 and 4: slips of the decimal point)."""
    lrs = _lrs(lambda o: schedules.InverseTimeDecay(o, decay_rate=1))
    assert lrs == pytest.approx([0.1, 0.2 / 3, 0.05, 0.04])
    assert [round(x, 3) for x in lrs] == [0.1, 0.067, 0.05, 0.04]


def test_other_schedules():
    assert _lrs(lambda o: schedules.ExponentialDecay(o)) == pytest.approx(
        [0.2 * 0.95 ** e for e in range(1, 5)])
    assert _lrs(lambda o: schedules.InverseSqrtDecay(o, k=0.5)) == pytest.approx(
        [0.5 / numpy.sqrt(e) * 0.2 for e in range(1, 5)])
    assert _lrs(lambda o: schedules.StepDecay(o, 2, 0.5)) == pytest.approx([0.2, 0.1, 0.1, 0.05])


def test_schedule_state_round_trip():
    opt = optim.SGD([nn.Parameter(numpy.zeros(1))], lr=0.2)
    s = schedules.InverseTimeDecay(opt, 1)
    s.step()
    s.step()
    opt2 = optim.SGD([nn.Parameter(numpy.zeros(1))], lr=0.9)
    s2 = schedules.InverseTimeDecay(opt2, 1)
    s2.load_state_dict(s.state_dict())
    assert opt2.lr == opt.lr and s2.step() == s.step()


# -- EWMA -------------------------------------------------------------------------------
def test_ewma_recurrence_and_bias_correction():
    theta = [40.0, 49.0, 45.0, 44.0]
    v, expected = 0.0, []
    for x in theta:
        v = 0.9 * v + 0.1 * x
        expected.append(v)
    assert_close(gpunet.ewma(theta, 0.9, bias_correction=False), expected, 1e-15, 0)
    corrected = gpunet.ewma(theta, 0.9)
    assert corrected[0] == pytest.approx(40.0)  # V_1 / (1 - beta) = theta_1
    assert_close(corrected, numpy.array(expected) / (1 - 0.9 ** numpy.arange(1, 5)), 1e-15, 0)


def test_ewma_averages_over_about_one_over_one_minus_beta():
    """0.9^10 ~ 0.35 ~ 1/e: the weight of a value ten days back (the notes)."""
    assert 0.9 ** 10 == pytest.approx(1 / numpy.e, abs=0.02)
    assert 0.98 ** 50 == pytest.approx(1 / numpy.e, abs=0.01)
    step = numpy.r_[numpy.zeros(100), numpy.ones(200)]
    for beta, lag in [(0.5, 2), (0.9, 10), (0.98, 50)]:
        v = gpunet.ewma(step, beta, bias_correction=False)
        assert v[100 + lag - 1] == pytest.approx(1 - beta ** lag, rel=1e-9)
    with pytest.raises(ValueError, match="beta"):
        gpunet.ewma(step, 1.0)


GROUP_GRADS = [numpy.array(g) for g in ([0.5, -1.0, 0.25], [0.1, 0.3, -0.2], [-0.4, 0.2, 0.6])]


def _pairs(torch):
    return {
        "sgd": (lambda ps, **k: __import__("gpunet").optim.SGD(ps, 0.1, momentum=0.8, **k),
                lambda ps, **k: torch.optim.SGD(ps, 0.1, momentum=0.8, **k)),
        "rmsprop": (lambda ps, **k: __import__("gpunet").optim.RMSProp(ps, 0.01, beta=0.9,
                                                                      eps=1e-8, **k),
                    lambda ps, **k: torch.optim.RMSprop(ps, 0.01, alpha=0.9, eps=1e-8, **k)),
        "adam": (lambda ps, **k: __import__("gpunet").optim.Adam(ps, 0.01, **k),
                 lambda ps, **k: torch.optim.Adam(ps, 0.01, **k)),
    }


@pytest.mark.torch
@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])
def test_weight_decay_and_lr_per_group_match_torch(name):
    torch = pytest.importorskip("torch")
    import numpy as np

    from gpunet import nn
    ours_make, theirs_make = _pairs(torch)[name]
    weight, bias = nn.Parameter(np.array([[1.0, 2.0, -1.0]])), nn.Parameter(np.array([0.5, 1, 2]))
    tw = torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64, requires_grad=True)
    tb = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    # the bias 1-D: it decays as torch's does when in a decaying group
    ours = ours_make([{"params": [weight]}, {"params": [bias], "weight_decay": 0.0, "lr": 0.05}],
                     weight_decay=0.1)
    theirs = theirs_make([{"params": [tw]}, {"params": [tb], "weight_decay": 0.0, "lr": 0.05}],
                         weight_decay=0.1)
    for g in GROUP_GRADS:
        weight.grad[...], bias.grad[...] = g[None], g
        tw.grad, tb.grad = torch.from_numpy(g[None].copy()), torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
    np.testing.assert_allclose(weight.data, tw.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bias.data, tb.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_weight_decay_keeps_biases_unless_asked_and_then_matches_torch(name):
    """API.md: weight decay skips biases (``Parameter.decay`` False for vectors);
    a bias marked ``decay = True`` decays exactly as torch.optim decays it."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from gpunet import nn
    ours_make, theirs_make = _pairs(torch)[name]
    kept = nn.Parameter(np.array([0.5, 1.0, 2.0]))
    ours_make([kept], weight_decay=0.3).step()  # a zero gradient: only decay could move it
    assert np.array_equal(kept.data, [0.5, 1.0, 2.0])
    bias = nn.Parameter(np.array([0.5, 1.0, 2.0]))
    bias.decay = True
    tb = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    ours, theirs = ours_make([bias], weight_decay=0.3), theirs_make([tb], weight_decay=0.3)
    for g in GROUP_GRADS:
        bias.grad[...], tb.grad = g, torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
    np.testing.assert_allclose(bias.data, tb.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["SGD", "Momentum", "RMSProp", "Adam"])
def test_parameter_groups_round_trip_through_state_dict_and_a_checkpoint(name, tmp_path):
    import numpy as np

    import gpunet
    from gpunet import nn, optim
    from gpunet.optim import schedules

    def make():
        gpunet.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 2))
        groups = [{"params": [model[0].weight], "lr": 0.1, "weight_decay": 0.2},
                  {"params": [model[0].bias], "lr": 0.02}]
        return model, getattr(optim, name)(groups, lr=0.05)

    def train(model, opt, steps):
        for k in range(steps):
            for p in model.parameters():
                p.grad[...] = np.sin(np.arange(p.data.size) + k).reshape(p.shape)
            opt.step()

    model, opt = make()
    sched = schedules.StepDecay(opt, 1, 0.5)
    train(model, opt, 2)
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.01]
    state = opt.state_dict()
    assert [g["params"] for g in state["param_groups"]] == [[0], [1]]
    assert [g["weight_decay"] for g in state["param_groups"]] == [0.2, 0.0]
    gpunet.save(tmp_path / "ck.npz", model, opt)
    snapshot = {k: v.copy() for k, v in model.state_dict().items()}
    train(model, opt, 3)

    for restore in ("state_dict", "checkpoint"):
        again, opt2 = make()
        if restore == "state_dict":
            again.load_state_dict(snapshot)
            opt2.load_state_dict(state)
        else:
            gpunet.load(tmp_path / "ck.npz", again, opt2)
        assert [g["lr"] for g in opt2.param_groups] == [0.05, 0.01]
        assert [g["weight_decay"] for g in opt2.param_groups] == [0.2, 0.0]
        train(again, opt2, 3)
        for (key, a), b in zip(model.state_dict().items(), again.state_dict().values()):
            assert np.array_equal(a, b), (restore, key)


def test_groups_are_checked_in_one_line():
    import numpy as np

    from gpunet import nn, optim
    p, q = nn.Parameter(np.zeros((2, 2))), nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match=r"^param_groups\[1\]: lr: expected a number >= 0, "
                                         r"got -1$"):
        optim.Adam([{"params": [p]}, {"params": [q], "lr": -1}])
    with pytest.raises(ValueError, match=r"more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [p, q]}], 0.1)
    with pytest.raises(ValueError, match=r"unknown keys \['momentum'\]"):
        optim.Adam([{"params": [p], "momentum": 0.9}])
