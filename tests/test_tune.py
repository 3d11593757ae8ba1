"""gpunet.tune: the notes' random search on the right scales, on Optuna (`gpunet tune` itself:
test_tune_cli.py)."""
import math
import os
import subprocess
import sys

import numpy
import pytest

from gpunet import tune
from gpunet.tune.trials import _ReportEpochs

from .helpers import REPO_ROOT

optuna = pytest.importorskip("optuna", reason="gpunet tune needs Optuna (gpunet[tune])")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--dataset", "synthetic", "--limit", "400", "--dev-size", "100", "--batch-size", "32",
         "--device", "cpu"]


def samples(param, count=2000, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return numpy.array([param.sample(study.ask()) for _ in range(count)])


def ks_uniform(values, low, high) -> float:
    """Kolmogorov-Smirnov distance between ``values`` and the uniform law on [low, high]."""
    u = numpy.sort((numpy.asarray(values) - low) / (high - low))
    n = len(u)
    return float(max((numpy.arange(1, n + 1) / n - u).max(), (u - numpy.arange(n) / n).max()))


# 1% critical value of the KS distance for 2000 samples: 1.63 / sqrt(2000)
KS_1_PERCENT = 1.63 / math.sqrt(2000)


def test_log_uniform_is_uniform_in_log10():
    lr = samples(tune.log_uniform("lr", 1e-4, 1))
    assert lr.min() >= 1e-4 and lr.max() <= 1
    assert ks_uniform(numpy.log10(lr), -4, 0) < KS_1_PERCENT
    assert ks_uniform(lr, 1e-4, 1) > 5 * KS_1_PERCENT  # and far from uniform in lr itself


def test_one_minus_log_uniform_is_uniform_in_log10_of_one_minus_beta():
    beta = samples(tune.one_minus_log_uniform("beta", 0.9, 0.999))
    assert beta.min() >= 0.9 and beta.max() <= 0.999
    assert ks_uniform(numpy.log10(1 - beta), -3, -1) < KS_1_PERCENT
    # as many draws in 0.99-0.999 as in 0.9-0.99, where a uniform beta puts 9% there
    assert 0.46 < (beta > 0.99).mean() < 0.54


def test_whole_numbers_powers_of_two_and_choices():
    batch = samples(tune.int_uniform("batch_size", 16, 256, power_of_two=True), 400)
    assert set(batch) == {16, 32, 64, 128, 256}
    units = samples(tune.int_uniform("units", 3, 7), 400)
    assert set(units) == {3, 4, 5, 6, 7}
    picked = samples(tune.choice("optimizer", ["sgd", "adam"]), 200)
    assert set(picked) == {"sgd", "adam"}


@pytest.mark.parametrize("text, message", [
    ("lr=log:0:1", "a log range needs low > 0, got 0.0"),
    ("lr=log:1:0.5", "low must be below high, got low=1.0, high=0.5"),
    ("momentum=beta:0.9:1", "beta needs 0 < low < high < 1"),
    ("batch_size=pow2:16:100", "pow2 needs powers of two"),
    ("batch_size=int:1.5:4", "int needs whole bounds"),
    ("lr=cubic:1:2", "the kind must be one of log, beta, uniform, int, pow2, choice"),
    ("lr=5", "--param 'lr=5': the kind must be one of log, beta, uniform, int, pow2, choice"),
    ("lr", "expected NAME=KIND:LOW:HIGH"),
    ("lr=log:1", "log takes LOW:HIGH"),
    ("lr=log:a:b", "LOW and HIGH must be numbers"),
])
def test_a_bad_space_is_one_line_naming_the_parameter(text, message):
    with pytest.raises(ValueError, match=message):
        tune.parse_param(text)


def test_a_space_file_in_json_or_yaml(tmp_path):
    (tmp_path / "space.json").write_text('{"lr": "log:1e-4:1", "optimizer": "choice:sgd,adam"}')
    (tmp_path / "space.yaml").write_text("lr: log:1e-4:1\noptimizer: choice:sgd,adam\n")
    for name in ("space.json", "space.yaml"):
        assert tune.read_space(str(tmp_path / name)) == [
            tune.log_uniform("lr", 1e-4, 1), tune.choice("optimizer", ["sgd", "adam"])]
    (tmp_path / "bad.json").write_text('["lr"]')
    with pytest.raises(ValueError, match="expected a mapping of NAME: SPEC"):
        tune.read_space(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("name, text, message", [
    ("missing.json", None, "--space {path}: cannot read it: No such file or directory"),
    ("number.json", '{"lr": 5}', "--space {path}: 'lr': expected a spec KIND:LOW:HIGH or "
     "choice:A,B in quotes (KIND one of log, beta"),
    ("number.yaml", "lr: 0.1\n", "--space {path}: 'lr': expected a spec KIND:LOW:HIGH"),
    ("kind.json", '{"lr": "1e-4:1"}', "--space {path}: 'lr': the kind must be one of log, "
     "beta, uniform, int, pow2, choice (KIND:LOW:HIGH or choice:A,B), got '1e-4'"),
    ("bounds.json", '{"lr": "log:1"}', "--space {path}: 'lr': log takes LOW:HIGH, got '1'"),
    ("range.json", '{"lr": "log:1:0.5"}', "--space {path}: 'lr': lr=log:1:0.5: low must be "
     "below high"),
    ("broken.json", '{"lr"', "--space {path}: expected JSON, got: Expecting ':' delimiter"),
    ("broken.yaml", "lr: [1, 2\n", "--space {path}: expected YAML, got: while parsing a "
     "flow sequence"),
])
def test_a_bad_space_file_is_one_line_naming_the_file_and_key(tmp_path, name, text, message):
    """It said "[Errno 2] No such file or directory: 'missing.json'" without --space,
    and "--param 'lr=5': 5 takes LOW:HIGH, got ''" for a space file's {"lr": 5}."""
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError) as caught:
        tune.read_space(str(path))
    assert str(caught.value).startswith(message.format(path=path)), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_space_file_error_reaches_the_cli_as_one_line(tmp_path, capsys):
    from gpunet import cli
    missing = tmp_path / "missing.json"
    assert cli.main(["tune", "--space", str(missing), "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err == \
        f"gpunet: error: --space {missing}: cannot read it: No such file or directory\n"


def test_refine_narrows_each_range_around_the_best_on_its_scale():
    space = [tune.log_uniform("lr", 1e-4, 1), tune.one_minus_log_uniform("momentum", 0.9, 0.999),
             tune.int_uniform("batch_size", 16, 256, power_of_two=True),
             tune.choice("optimizer", ["sgd", "momentum", "adam"])]
    best = [{"lr": 1e-3, "momentum": 0.99, "batch_size": 32, "optimizer": "adam"},
            {"lr": 3e-3, "momentum": 0.995, "batch_size": 64, "optimizer": "momentum"}]
    lr, momentum, batch, optimizer = tune.refine(space, best)
    # lr: log10 in [-3, -2.52] widened by 0.4 decades, inside [1e-4, 1]
    assert lr.kind == "log" and lr.low == pytest.approx(10**-3.4) \
        and lr.high == pytest.approx(10**(math.log10(3e-3) + 0.4))
    # momentum: log10(1 - beta) in [-2.3, -2] widened by 0.2
    assert momentum.kind == "beta" and momentum.low == pytest.approx(1 - 10**-1.8) \
        and momentum.high == pytest.approx(1 - 10**(math.log10(0.005) - 0.2))
    assert (batch.kind, batch.low, batch.high) == ("pow2", 32, 64)  # 2**round(4.6), 2**round(6.4)
    assert optimizer.options == ("momentum", "adam")
    for old, new in zip(space[:2], (lr, momentum)):
        assert old.low <= new.low < new.high <= old.high
    with pytest.raises(ValueError, match="no finished trial"):
        tune.refine(space, [])


def test_pruning_reports_each_epoch():
    class Trial:
        reported = []

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return len(self.reported) == 2

    class Run:
        def __init__(self, epoch, accuracy):
            self.epoch, self.history = epoch, {"val_accuracy": [accuracy]}

    callback = _ReportEpochs(Trial(), optuna, epochs=3)
    assert callback.on_epoch_end(Run(1, 0.5)) is False
    with pytest.raises(optuna.TrialPruned, match="0.2500 at epoch 2"):
        callback.on_epoch_end(Run(2, 0.25))
    assert Trial.reported == [(1, 0.5), (2, 0.25)]


def test_a_trial_is_never_pruned_after_its_last_epoch():
    """Pruning a finished trial saves nothing, and dropped it from the complete ones
    and from --refine (issue 25.26)."""
    class Trial:
        def report(self, value, step):
            pass

        def should_prune(self):
            return True

    class Run:
        def __init__(self, epoch):
            self.epoch, self.history = epoch, {"val_accuracy": [0.1]}

    callback = _ReportEpochs(Trial(), optuna, epochs=2)
    with pytest.raises(optuna.TrialPruned):
        callback.on_epoch_end(Run(1))
    assert callback.on_epoch_end(Run(2)) is False


def test_the_plot_tick_labels_do_not_overlap(tmp_path, monkeypatch):
    """Ranges inside one decade, small uniform numbers, long choices: matplotlib's own
    ticks overlapped (issue 25.26)."""
    pytest.importorskip("matplotlib")
    import random

    import matplotlib.pyplot as plt
    space = [tune.log_uniform("lr", 1e-5, 1), tune.one_minus_log_uniform("momentum", 0.9, 0.9999),
             tune.int_uniform("batch_size", 16, 1024, power_of_two=True),
             tune.uniform("weight_decay", 0, 0.00123), tune.log_uniform("decay", 1.1e-3, 2.7e-3),
             tune.choice("schedule", ["inverse-time", "exponential", "inverse-sqrt", "step"])]
    study = tune.Study(str(tmp_path))
    study.write_settings({"rounds": [{"space": {p.name: p.spec() for p in space}}],
                          "study": "gpunet"})
    trials = optuna.create_study(study_name="gpunet", storage=study.storage)
    rng = random.Random(0)
    for _ in range(12):
        values = {p.name: rng.choice(p.options) if p.kind == "choice"
                  else p.unscale(rng.uniform(*sorted((p.scale(p.low), p.scale(p.high)))))
                  for p in space}
        trials.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, value=rng.random(),
            user_attrs={"hyperparameters": values}))
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    assert study.plot(str(tmp_path / "tune.png"))
    figure = figures[0]
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for ax in figure.axes:
        low, high = sorted(ax.get_xlim())
        ticks = ax.xaxis.get_major_ticks() + ax.xaxis.get_minor_ticks()
        labels = [t.label1 for t in ticks if low <= t.get_loc() <= high
                  and t.label1.get_visible() and t.label1.get_text()]
        boxes = sorted((label.get_window_extent(renderer) for label in labels),
                       key=lambda b: b.x0)
        assert len(boxes) >= 2, ax.get_xlabel()
        assert not [(a, b) for a, b in zip(boxes, boxes[1:]) if a.overlaps(b)], ax.get_xlabel()
    plt.close(figure)


def test_gpunet_tune_is_an_attribute_without_importing_optuna_at_import():
    code = ("import sys, gpunet; assert 'optuna' not in sys.modules and 'gpunet.tune' not in "
            "sys.modules; import gpunet.tune as tune; assert gpunet.tune is tune; "
            "print(gpunet.tune.search.__name__, gpunet.tune.log_uniform('lr', 1e-4, 1).name)")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
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
    readme = (REPO_ROOT / "README.md").read_text()
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


def test_a_spawned_worker_takes_the_settings_given_in_python(monkeypatch):
    """A worker process is spawned: it sees the environment only, so the settings the
    parent gave in Python (``gpunet.config.given()``) travel with it and are applied
    before its first trial."""
    from gpunet import config, cpu
    from gpunet.tune import trials
    applied = []
    monkeypatch.setattr(config, "update", lambda **values: applied.append(values))
    monkeypatch.setattr(cpu, "set_num_threads", lambda n: None)
    monkeypatch.setattr(trials, "require_optuna", lambda: (_ for _ in ()).throw(
        RuntimeError("stop before the study")))
    with pytest.raises(RuntimeError, match="stop before the study"):
        trials._worker("sqlite:///unused.db", "study", {}, {}, ".", 1, "random", "none",
                       0, 1, child=True, settings={"kernels": False})
    assert applied == [{"kernels": False}]


def test_a_param_contains_only_what_it_samples():
    """--resume reruns an interrupted trial with its values only while the space (after
    --refine, narrower) still holds them: Param.contains decides."""
    lr = tune.log_uniform("lr", 1e-4, 1e-1)
    assert lr.contains(1e-3) and lr.contains(1e-4) and lr.contains(0.1)
    assert not lr.contains(0.5) and not lr.contains(1e-5) and not lr.contains("0.01")
    optimizer = tune.choice("optimizer", ["sgd", "adam"])
    assert optimizer.contains("adam") and not optimizer.contains("rmsprop")
