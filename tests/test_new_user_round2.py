"""Issue 25, "Tried as a new user would, round 2": what a new user ran into, each
checked the way they met it (CLI items through a subprocess: exit status and the one
error line)."""
import os
import pathlib
import subprocess
import sys

import numpy
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def gpunet_cli(*args, env=None, cwd=None, timeout=300):
    """``python -m gpunet ARGS`` in a fresh process, on the CPU, with this checkout first."""
    env = {**os.environ, "GPUNET_DEVICE": "cpu", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "gpunet", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def one_error_line(done) -> str:
    """The one line a failing command printed on stderr, and no traceback."""
    lines = [line for line in done.stderr.splitlines()
             if line.strip() and "warning" not in line]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    return lines[0]


# -- 11. a bad GPUNET_NUM_THREADS ------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_bad_num_threads_leaves_help_working_and_commands_fail_in_one_line(value):
    env = {"GPUNET_NUM_THREADS": value}
    done = gpunet_cli("--help", env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    done = gpunet_cli("summary", "lenet5", env=env)
    assert done.returncode == 2
    assert one_error_line(done) == (
        f"gpunet: error: GPUNET_NUM_THREADS: expected an integer >= 1, got {value!r}")


def test_integer_variables_are_read_when_used_not_at_import(monkeypatch):
    from gpunet import config
    from gpunet.cpu import parallel
    monkeypatch.setenv("GPUNET_NUM_THREADS", " 3 ")
    assert config.get("num_threads") == 3
    monkeypatch.setenv("GPUNET_NUM_THREADS", "")
    assert config.get("num_threads") is None
    monkeypatch.setenv("GPUNET_NUM_THREADS", "2.5")
    with pytest.raises(ValueError, match=r"^GPUNET_NUM_THREADS: expected an integer >= 1, "
                                         r"got '2.5'$"):
        config.check_environment()
    with pytest.raises(ValueError, match="GPUNET_NUM_THREADS"):
        parallel._default_threads()


# -- 16. bench --out where nothing can be written ---------------------------------------------


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_bench_refuses_an_unwritable_out_before_timing_anything(where, tmp_path):
    if where == "under-a-file":  # even root cannot make a folder inside a file
        (tmp_path / "file").write_text("")
        out = str(tmp_path / "file" / "results")
    else:
        out = "/proc/self/gpunet-bench"
    done = gpunet_cli("bench", "--device", "cpu", "--net", "lenet5", "--op", "maxpool",
                      "--rounds", "1", "--no-torch", "--out", out)
    assert done.returncode == 2
    assert "timing" not in done.stderr and done.stdout == ""
    assert one_error_line(done).startswith(f"gpunet: error: --out: cannot write in {out} (")


# -- 19. defaults in --help; gpunet alone lists the commands -----------------------------------


def test_gpunet_alone_lists_the_commands_and_fails_as_git_does():
    done = gpunet_cli()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    for command in ("train", "tune", "evaluate", "summary", "gradcheck", "bench", "info"):
        assert f"\n    {command} " in done.stdout, (command, done.stdout)


def _commands():
    from gpunet import cli
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_subcommand_help_shows_every_default(command):
    done = gpunet_cli(command, "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines anywhere
    for action in _commands()[command]._actions:
        if action.option_strings and action.default not in (None, False, [], "==SUPPRESS=="):
            assert f"(default: {action.default})" in text, (action.dest, text)
    if command == "train":
        assert "--momentum MOMENTUM momentum of sgd, beta of momentum and rmsprop " \
               "(default: 0.9)" in text


# -- 28. the README's gpunet.tune and "exactly" -------------------------------------------------


def test_gpunet_tune_is_an_attribute_without_importing_optuna_at_import():
    code = ("import sys, gpunet; assert 'optuna' not in sys.modules and 'gpunet.tune' not in "
            "sys.modules; import gpunet.tune as tune; assert gpunet.tune is tune; "
            "print(gpunet.tune.search.__name__, gpunet.tune.log_uniform('lr', 1e-4, 1).name)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["search", "lr"]
    code = "import gpunet; print(gpunet.tune.search.__name__)"  # as the README had it
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "search", done.stderr


def test_readme_tune_snippet_runs_and_distributed_claim_says_rounding(monkeypatch):
    import re

    import gpunet.tune
    readme = (ROOT / "README.md").read_text()
    [snippet] = re.findall(r"Python: `(import gpunet\.tune[^`]*)`", readme)
    called = []
    monkeypatch.setattr(gpunet.tune, "search", lambda *a, **k: called.append((a, k)))
    exec(snippet, {})
    [((space, train), _)] = called
    assert space[0].name == "lr" and train == {"epochs": 1}
    text = " ".join(readme.split())
    assert "train exactly as one" not in text
    assert "Two processes at batch 32 thus train as one at batch 64" in text
    assert "not the same bits" in text and "float32" in text


# -- 13. the examples on a device that cannot be used ----------------------------------------

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _no_gpu() -> bool:
    from gpunet.backend import cuda_unavailable_reason
    return cuda_unavailable_reason() is not None


@pytest.mark.parametrize("device", ["cuda", "tpu"])
@pytest.mark.parametrize("how", ["flag", "environment"])
@pytest.mark.parametrize("example", [e.name for e in EXAMPLES])
def test_every_example_refuses_an_unusable_device_in_one_line(example, how, device, tmp_path):
    if device == "cuda" and not _no_gpu():
        pytest.skip("a GPU is usable here")
    if example == "hyperparameter_search.py":
        pytest.skip("its device goes to gpunet.tune's trials (issue 25.13, the tune part)")
    script = str(ROOT / "examples" / example)
    takes_device = "--device" in (ROOT / "examples" / example).read_text()
    if how == "flag" and not takes_device:
        pytest.skip(f"{example} has no --device")
    env = {**os.environ, "MPLBACKEND": "Agg", "GPUNET_DATA": str(tmp_path / "none"),
           "PYTHONPATH": str(ROOT), "GPUNET_DEVICE": device if how == "environment" else "cpu"}
    args = ["--quick"] + (["--device", device] if how == "flag" else [])
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    if takes_device:  # the others run on the CPU whatever the environment says
        assert done.returncode == 2
        given = f"--device {device}" if how == "flag" else f"GPUNET_DEVICE={device}"
        assert one_error_line(done).startswith(f"{example}: error: {given}: ")
    else:
        assert done.returncode == 0, done.stderr


# -- 26. curves.png: whole epochs on the x axis ------------------------------------------------


@pytest.mark.parametrize("epochs", [2, 3, 7])
def test_curves_have_integer_epoch_ticks(epochs, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from gpunet.train import History
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    rows = [{"epoch": e, "loss": 1.0 / e, "accuracy": 0.5, "val_loss": 1.1 / e,
             "val_accuracy": 0.4, "lr": 0.1, "time": 1.0} for e in range(1, epochs + 1)]
    History(rows).plot(tmp_path / "curves.png")
    [fig] = figures
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    monkeypatch.undo()
    plt.close(fig)


# -- 27. weight decay as torch.optim, and parameter groups --------------------------------------

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


def test_cli_still_keeps_weight_decay_off_biases_and_batch_norm():
    from gpunet import cli, models
    from gpunet.recipe.building import build_optimizer
    model = models.lenet5(batch_norm=True)
    args = cli.build_parser().parse_args(["train", "--optimizer", "sgd",
                                          "--weight-decay", "1e-4"])
    opt = build_optimizer(args, model.parameters())
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert decays[id(p)] == (1e-4 if p.data.ndim > 1 else 0.0), name


# -- 22. gradcheck: unresolved arrays and kinks ---------------------------------------------


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
