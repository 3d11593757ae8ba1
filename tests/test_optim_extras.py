"""AdamW, Adam(betas=), gradient clipping and the warm-up cosine schedule, each against
PyTorch: ten steps of weights and optimizer state, in float64."""
import warnings

import numpy
import pytest

import gpunet
from gpunet import losses, nn, optim
from gpunet.optim import schedules
from gpunet.train import fit
from tests.helpers import assert_close

RNG = numpy.random.default_rng(0)
W0 = [RNG.standard_normal((3, 4)), RNG.standard_normal(4)]
GRADS = [[RNG.standard_normal((3, 4)), RNG.standard_normal(4)] for _ in range(10)]


def _ten_steps(ours_make, theirs_make, torch, groups=False):
    """The same ten gradients into both; returns (ours, theirs, our params, their tensors).
    Every parameter is marked to decay, as torch decays whatever it is given (gpunet
    skips vectors unless asked: API.md)."""
    ps = [nn.Parameter(w.copy(), decay=True) for w in W0]
    ts = [torch.tensor(w.copy(), requires_grad=True) for w in W0]
    ours = ours_make([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.05}] if groups else ps)
    theirs = theirs_make([{"params": [ts[0]]}, {"params": [ts[1]], "lr": 0.05}] if groups
                         else ts)
    for grads in GRADS:
        for p, t, g in zip(ps, ts, grads):
            p.grad[...] = g
            t.grad = torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
    return ours, theirs, ps, ts


@pytest.mark.torch
@pytest.mark.parametrize("groups", [False, True])
@pytest.mark.parametrize("name", ["adamw", "adamw_betas", "adam_betas", "adamw_no_decay"])
def test_adam_family_matches_torch_for_ten_steps(name, groups):
    torch = pytest.importorskip("torch")
    ours_make, theirs_make = {
        "adamw": (lambda ps: optim.AdamW(ps, 0.01),
                  lambda ps: torch.optim.AdamW(ps, 0.01)),
        "adamw_betas": (lambda ps: optim.AdamW(ps, 0.02, betas=(0.8, 0.99), weight_decay=0.3),
                        lambda ps: torch.optim.AdamW(ps, 0.02, betas=(0.8, 0.99),
                                                     weight_decay=0.3)),
        "adam_betas": (lambda ps: optim.Adam(ps, 0.01, betas=(0.5, 0.9), weight_decay=0.1),
                       lambda ps: torch.optim.Adam(ps, 0.01, betas=(0.5, 0.9),
                                                   weight_decay=0.1)),
        "adamw_no_decay": (lambda ps: optim.AdamW(ps, 0.01, weight_decay=0),
                           lambda ps: torch.optim.Adam(ps, 0.01)),
    }[name]
    ours, theirs, ps, ts = _ten_steps(ours_make, theirs_make, torch, groups)
    state = ours.state_dict()["state"]
    for i, (p, t) in enumerate(zip(ps, ts)):
        assert_close(p.data, t.detach().numpy(), 1e-12, 1e-14, f"weight {i}")
        for slot in ("exp_avg", "exp_avg_sq"):
            assert_close(state[i][slot], theirs.state[t][slot].numpy(), 1e-12, 1e-16,
                         f"{slot} {i}")
        assert int(theirs.state[t]["step"]) == ours.steps == 10


def test_betas_in_a_group_and_both_spellings():
    a, b = nn.Parameter(numpy.ones((2, 2))), nn.Parameter(numpy.ones(2))
    opt = optim.Adam([{"params": [a], "betas": (0.5, 0.6)}, {"params": [b]}], beta1=0.7)
    assert (opt.param_groups[0]["beta1"], opt.param_groups[0]["beta2"]) == (0.5, 0.6)
    assert (opt.param_groups[1]["beta1"], opt.param_groups[1]["beta2"]) == (0.7, 0.999)
    assert optim.Adam([a], beta1=0.8, betas=(0.8, 0.9)).beta2 == 0.9  # agreeing: fine
    with pytest.raises(ValueError, match=r"betas=\(0.5, 0.9\) and beta1=0.8 disagree"):
        optim.Adam([a], beta1=0.8, betas=(0.5, 0.9))
    with pytest.raises(ValueError, match="betas must be a pair"):
        optim.AdamW([a], betas=0.9)
    with pytest.raises(ValueError, match="beta2"):
        optim.AdamW([a], betas=(0.9, 1.0))
    assert optim.AdamW([a]).weight_decay == 0.01  # PyTorch's default


def test_adamw_state_dict_round_trips():
    a = nn.Parameter(numpy.ones((2, 2)))
    opt = optim.AdamW([a], 0.1)
    a.grad[...] = 1.0
    opt.step()
    again = optim.AdamW([nn.Parameter(numpy.ones((2, 2)))], 0.1)
    again.load_state_dict(opt.state_dict())
    assert again.steps == 1 and again.weight_decay == 0.01
    assert_close(again.state[0]["exp_avg"], opt.state[0]["exp_avg"], 0, 0)


# -- clipping -----------------------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    torch = pytest.importorskip("torch")
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).to(dtype="float64")
    twin = [torch.zeros(p.shape, dtype=torch.float64, requires_grad=True)
            for p in model.parameters()]
    rng = numpy.random.default_rng(1)
    for p, t in zip(model.parameters(), twin):
        p.grad[...] = rng.standard_normal(p.shape)
        t.grad = torch.from_numpy(p.grad.copy())
    total = nn.utils.clip_grad_norm_(model, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(twin, max_norm, norm_type)
    assert abs(float(total) - float(expected)) <= 1e-12 * float(expected)
    for p, t in zip(model.parameters(), twin):
        assert_close(p.grad, t.grad.numpy(), 1e-13, 1e-16)
    if max_norm < 1:
        clipped = nn.utils.clip_grad_norm_(model.parameters(), 1e9, norm_type)
        assert abs(float(clipped) - max_norm) < 1e-5


@pytest.mark.torch
def test_clip_grad_value_matches_torch():
    torch = pytest.importorskip("torch")
    p = nn.Parameter(numpy.zeros((3, 3)))
    p.grad[...] = numpy.linspace(-2, 2, 9).reshape(3, 3)
    t = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    t.grad = torch.from_numpy(p.grad.copy())
    assert nn.utils.clip_grad_value_([p], 0.7) is None
    torch.nn.utils.clip_grad_value_([t], 0.7)
    assert_close(p.grad, t.grad.numpy(), 0, 0)


def test_clipping_arguments_are_checked():
    p = nn.Parameter(numpy.zeros(2))
    with pytest.raises(ValueError, match="max_norm must be a number >= 0"):
        nn.utils.clip_grad_norm_([p], -1)
    with pytest.raises(TypeError, match=r"parameters\[0\] is a ndarray"):
        nn.utils.clip_grad_norm_([numpy.zeros(2)], 1.0)
    with pytest.raises(ValueError, match="clip_value must be a number >= 0"):
        nn.utils.clip_grad_value_(p, -0.1)
    p.grad[...] = numpy.inf
    with pytest.raises(RuntimeError, match="is inf"):
        nn.utils.clip_grad_norm_(p, 1.0, error_if_nonfinite=True)
    assert nn.utils.clip_grad_norm_([], 1.0) == 0.0


# -- the cosine schedule --------------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize("warmup, min_lr", [(0, 0.0), (3, 0.0), (4, 0.01)])
def test_cosine_with_warmup_matches_torch_for_every_group(warmup, min_lr):
    """Two parameter groups (rates 0.1 and 0.05), 12 steps and 3 past the end, against
    torch's LinearLR warm-up followed by CosineAnnealingLR."""
    torch = pytest.importorskip("torch")
    total = 12
    _, theirs, _, _ = _ten_steps(lambda ps: optim.SGD(ps, 0.1),
                                 lambda ps: torch.optim.SGD(ps, 0.1), torch, groups=True)
    ps = [nn.Parameter(w.copy()) for w in W0]
    ours = optim.SGD([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.05}], 0.1)
    for group, lr in zip(theirs.param_groups, (0.1, 0.05)):
        group["lr"] = group["initial_lr"] = lr
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, total - warmup, min_lr)
    if warmup:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SequentialLR's own deprecation chatter
            linear = torch.optim.lr_scheduler.LinearLR(theirs, 1 / (warmup + 1), 1.0, warmup)
            sched_t = torch.optim.lr_scheduler.SequentialLR(theirs, [linear, cosine], [warmup])
    else:
        sched_t = cosine
    sched = schedules.CosineDecay(ours, total, warmup, min_lr)
    for t in range(total + 1):
        for ours_g, theirs_g in zip(ours.param_groups, theirs.param_groups):
            assert abs(ours_g["lr"] - theirs_g["lr"]) < 1e-12, (t, ours_g["lr"], theirs_g["lr"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched_t.step()
        sched.step()
    for _ in range(3):  # held at min_lr after total
        sched.step()
    assert [g["lr"] for g in ours.param_groups] == [min_lr, min_lr]
    with pytest.raises(ValueError, match="warmup: expected fewer steps than total"):
        schedules.CosineDecay(ours, 5, 5)


def test_cosine_state_round_trips_and_fit_steps_it_per_batch():
    gpunet.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4))
    opt = optim.SGD(model, 0.1)
    sched = schedules.CosineDecay(opt, total=8, warmup=2, per_step=True)
    x = numpy.random.default_rng(0).standard_normal((12, 3)).astype("float32")
    y = numpy.arange(12) % 4
    history = fit(model, losses.SoftmaxCrossEntropy(), opt, (x, y), epochs=2, batch_size=3,
                  schedule=sched, progress=False, clip_grad_norm=0.1)
    assert sched.epoch == 8 and opt.lr == 0.0  # 4 steps an epoch, at the end: min_lr
    assert history["lr"] == [pytest.approx(0.1 / 3), pytest.approx(0.075)]  # t = 4: cos(pi / 3)
    again = schedules.CosineDecay(optim.SGD(model, 0.1), total=8, warmup=2, per_step=True)
    again.load_state_dict(sched.state_dict())
    assert again.epoch == 8 and again.lr == 0.0


# -- the CLI --------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--warmup", "3"], "--warmup needs --schedule cosine"),
    (["--schedule", "cosine", "--decay", "0.5"], "--schedule cosine takes none"),
    (["--schedule", "cosine", "--warmup", "-1"], "--warmup: expected 0 or more steps"),
    (["--clip-grad-norm", "0"], "--clip-grad-norm: expected a number > 0"),
    (["--schedule", "cosine", "--warmup", "100", "--limit", "40"],
     "--warmup 100: the run has 3 steps"),
])
def test_cli_refuses_bad_new_flags(tmp_path, capsys, flags, message):
    from gpunet.cli import main
    code = main(["train", "--dataset", "synthetic", "--model", "lenet5_notes", "--epochs", "1",
                 "--batch-size", "16", "--out", str(tmp_path), "--device", "cpu", *flags])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_adamw_cosine_warmup_clip_train_and_resume_with_their_flags(tmp_path, capsys):
    from gpunet.cli import main
    from gpunet.io import read_checkpoint
    out = str(tmp_path / "run")
    base = ["train", "--dataset", "synthetic", "--model", "lenet5_notes", "--limit", "48",
            "--batch-size", "16", "--out", out, "--device", "cpu", "--no-progress"]
    assert main([*base, "--epochs", "1", "--optimizer", "adamw", "--weight-decay", "0.05",
                 "--schedule", "cosine", "--warmup", "2", "--clip-grad-norm", "1.5"]) == 0
    header, _ = read_checkpoint(f"{out}/last.npz")
    flags = header["meta"]["flags"]
    assert (flags["optimizer"], flags["schedule"], flags["warmup"],
            flags["clip_grad_norm"]) == ("adamw", "cosine", 2, 1.5)
    assert header["meta"]["schedule"]["epoch"] == 3  # 43 training images: 3 steps
    capsys.readouterr()
    assert main([*base, "--resume", "--epochs", "2", "--clip-grad-norm", "3"]) == 2
    assert "was trained with --clip-grad-norm 1.5; drop --clip-grad-norm 3.0" in \
        capsys.readouterr().err
    assert main([*base, "--resume", "--epochs", "2"]) == 0  # the flags come from the run
    header, _ = read_checkpoint(f"{out}/last.npz")
    assert header["meta"]["schedule"]["epoch"] == 6 and header["meta"]["epoch"] == 2
