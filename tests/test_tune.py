"""gpunet.tune and `gpunet tune`: the notes' random search on the right scales, on Optuna."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy
import pytest

from gpunet import cli, tune

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
    ("lr", "expected NAME=KIND:LOW:HIGH"),
    ("lr=log:1", "log takes LOW:HIGH"),
    ("lr=log:a:b", "LOW and HIGH must be numbers"),
])
def test_a_bad_space_is_one_line_naming_the_parameter(text, message):
    with pytest.raises(ValueError, match=message):
        tune.parse_param(text)


@pytest.mark.parametrize("flags, message", [
    (["--param", "dropout=uniform:0:1"], "--param dropout: not a hyperparameter tune can set"),
    (["--param", "lr=int:1:4"], "--param lr=int:1:4: lr takes log, beta, uniform, choice"),
    (["--param", "lr=log:1e-3:1", "--param", "lr=log:1e-2:1"], "--param lr: given twice"),
    (["--dev-size", "0", "--param", "lr=log:1e-3:1"], "--dev-size must be above 0"),
    ([], "give the search space"),
])
def test_the_cli_refuses_a_bad_space_before_any_trial(tmp_path, capsys, flags, message):
    assert cli.main(["tune", *SMALL, "--out", str(tmp_path / "t"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t" / "trials").exists()


def test_a_space_file_in_json_or_yaml(tmp_path):
    (tmp_path / "space.json").write_text('{"lr": "log:1e-4:1", "optimizer": "choice:sgd,adam"}')
    (tmp_path / "space.yaml").write_text("lr: log:1e-4:1\noptimizer: choice:sgd,adam\n")
    for name in ("space.json", "space.yaml"):
        assert tune.read_space(str(tmp_path / name)) == [
            tune.log_uniform("lr", 1e-4, 1), tune.choice("optimizer", ["sgd", "adam"])]
    (tmp_path / "bad.json").write_text('["lr"]')
    with pytest.raises(ValueError, match="expected a mapping of NAME: SPEC"):
        tune.read_space(str(tmp_path / "bad.json"))


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

    callback = tune._ReportEpochs(Trial(), optuna, epochs=3)
    assert callback.on_epoch_end(Run(1, 0.5)) is False
    with pytest.raises(optuna.TrialPruned, match="0.2500 at epoch 2"):
        callback.on_epoch_end(Run(2, 0.25))
    assert Trial.reported == [(1, 0.5), (2, 0.25)]


def run_tune(*flags, timeout=300):
    return subprocess.run([sys.executable, "-m", "gpunet", "tune", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_two_workers_share_one_sqlite_study(tmp_path):
    """6 trials on 2 processes: each trial once, each with its run folder, then the
    table, the plot and the best configuration as a train command."""
    out = tmp_path / "t"
    done = run_tune(*SMALL, "--epochs", "1", "--param", "lr=log:1e-4:1e-1",
                    "--param", "batch_size=pow2:16:64", "--trials", "6", "--workers", "2",
                    "--out", str(out))
    assert done.returncode == 0, done.stderr
    study = tune.Study(str(out))
    numbers = sorted(t.number for t in study.trials())
    assert numbers == list(range(6))
    # each worker on its share of this machine's cores (gpunet's CPU threads)
    from gpunet import cpu
    shared = tune.threads_per_worker(2) if cpu.num_threads() > 1 else 1
    assert {t.user_attrs["cpu_threads"] for t in study.trials()} == {shared}
    for n in numbers:
        assert (out / "trials" / f"{n:03d}" / "metrics.csv").exists()
    assert (out / "tune.png").stat().st_size > 0
    assert (out / "trials.txt").read_text().count("complete") + \
        (out / "trials.txt").read_text().count("pruned") == 6
    best = [line for line in done.stdout.splitlines() if line.startswith("best: ")][0]
    words = best.removeprefix("best: ").split()
    assert words[:2] == ["gpunet", "train"]
    args = cli.build_parser().parse_args(words[1:])  # a command train takes
    top = study.rows()[0]
    assert args.lr == pytest.approx(top["hyperparameters"]["lr"], rel=1e-5)
    assert args.batch_size == top["hyperparameters"]["batch_size"]


def test_ctrl_c_then_resume_finishes_the_remaining_trials(tmp_path):
    out = tmp_path / "t"
    process = subprocess.Popen(
        [sys.executable, "-m", "gpunet", "tune", *SMALL, "--epochs", "3", "--pruner", "none",
         "--param", "lr=log:1e-4:1e-2", "--trials", "5", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "trials" / "001").is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert f"gpunet tune --resume --out {out} runs the remaining trials" in err
    done = run_tune("--resume", "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = tune.Study(str(out)).rows()
    states = [r["state"] for r in rows]
    assert states.count("complete") == 5 and states.count("interrupted") == 1
    # the settings came from tune.json: the resumed trials also ran 3 epochs
    assert all(r["best_epoch"] <= 3 for r in rows if r["state"] == "complete")
    again = run_tune("--resume", "--out", str(out), "--lr", "0.1")
    assert again.returncode == 2 and "drop --lr" in again.stderr


def test_failed_and_pruned_trials_show_in_the_table(tmp_path):
    """A trial that diverges is recorded as failed with its message and the study goes
    on; a pruned one shows the epoch and accuracy it stopped at."""
    out = tmp_path / "t"
    done = run_tune(*SMALL, "--epochs", "1", "--optimizer", "sgd", "--momentum", "0",
                    "--param", "lr=log:1e2:1e3", "--trials", "2", "--out", str(out))
    assert done.returncode == 1, done.stderr  # nothing completed: the study failed
    assert done.stdout.count("failed") == 4 and "NonFiniteError" in done.stdout  # lines, table
    assert "no trial completed" in done.stderr
    study = tune.Study(str(out))
    pruned = optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={}, distributions={},
        intermediate_values={1: 0.42}, user_attrs={"hyperparameters": {"lr": 300.0}})
    study.load().add_trial(pruned)
    table = study.table()
    assert "pruned" in table and "0.4200" in table
    assert [r["state"] for r in study.rows()] == ["pruned", "failed", "failed"]


def test_refine_runs_a_narrower_round_in_the_same_study(tmp_path):
    out = tmp_path / "t"
    first = run_tune(*SMALL, "--epochs", "1", "--pruner", "none", "--param", "lr=log:1e-5:1",
                     "--trials", "4", "--out", str(out))
    assert first.returncode == 0, first.stderr
    second = run_tune("--refine", str(out), "--trials", "2")
    assert second.returncode == 0, second.stderr
    settings = json.loads((out / "tune.json").read_text())
    old, new = (tune.parse_param(f"lr={r['space']['lr']}") for r in settings["rounds"])
    assert old.low <= new.low < new.high <= old.high
    assert (new.high / new.low) < (old.high / old.low)
    assert len(tune.Study(str(out)).trials()) == 6
    assert "refined: lr=log:" in second.stdout


def test_an_existing_run_is_not_overwritten_without_asking(tmp_path, capsys):
    out = tmp_path / "t"
    out.mkdir()
    (out / "tune.json").write_text("{}")
    assert cli.main(["tune", *SMALL, "--param", "lr=log:1e-3:1", "--out", str(out)]) == 2
    assert "holds a tuning run: --resume continues it" in capsys.readouterr().err
    assert (out / "tune.json").read_text() == "{}"


def test_without_optuna_tune_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert cli.main(["tune", *SMALL, "--param", "lr=log:1e-3:1",
                     "--out", str(tmp_path / "t")]) == 2
    assert "pip install 'gpunet[tune]'" in capsys.readouterr().err


# -- issue 25: tune as a new user tries it ------------------------------------------------------
def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpunet: "), err
    return lines[0]


def snapshot(folder) -> dict:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def earlier_run(out):
    """The files of an earlier tuning run, for checking that a refusal leaves them be."""
    (out / "trials" / "000").mkdir(parents=True)
    (out / "trials" / "000" / "metrics.csv").write_text("epoch,loss\n1,0.5\n")
    (out / "tune.json").write_text('{"earlier": true}')
    return snapshot(out)


def gpu_usable() -> bool:
    from gpunet import backend
    return backend.cuda_unavailable_reason() is None


@pytest.mark.parametrize("flags, message", [
    # choices checked against gpunet train's own (issue 25.5)
    (["--param", "optimizer=choice:sgd,lamb"],
     "--param optimizer=choice:sgd,lamb: gpunet train's --optimizer takes "
     "sgd, momentum, rmsprop, adam, adamw; got 'lamb'"),
    (["--param", "model=choice:lenet5,resnet50"], "gpunet train's --model takes"),
    (["--param", "schedule=choice:step,linear", "--decay", "0.5"], "got 'linear'"),
    (["--param", "batch_norm=choice:true,maybe"], "--batch-norm is on or off"),
    (["--param", "lr=choice:0.1,fast"], "gpunet train's --lr expected a number, got 'fast'"),
    (["--param", "epochs=choice:1,2.5"], "--epochs expected a whole number, got 2.5"),
    (["--param", "batch_size=int:0:8"], "--batch-size expected a positive integer, got 0"),
    # sampled ranges inside the flag's valid range, fixed flags through train's checks (25.14)
    (["--param", "momentum=uniform:0.5:1.5"],
     "--momentum: expected a number in [0, 1), got 1.5 (a value --param "
     "momentum=uniform:0.5:1.5 can sample)"),
    (["--param", "lr=log:1e-3:1", "--limit", "100", "--dev-size", "80"],
     "--dev-size 80 would leave 20 of the 100 training images of --limit 100"),
    (["--param", "lr=log:1e-3:1", "--schedule", "step"], "--schedule step needs --decay"),
    (["--schedule", "step", "--param", "decay=uniform:0.5:2"],
     "so it must be between 0 and 1, got 2.0 (a value --param decay=uniform:0.5:2 can "
     "sample)"),
    (["--param", "lr=log:1e-3:1", "--device", "cuda"], "--device cuda: "),
])
def test_what_train_would_refuse_is_refused_before_any_trial(tmp_path, flags, message):
    """One line, exit 2, and an earlier run in --out (--overwrite) as it was: the old
    code trained adamw as Adam, and ran (and failed) every trial of the others."""
    if "cuda" in flags and gpu_usable():
        pytest.skip("a GPU answers here: --device cuda is no mistake")
    out = tmp_path / "t"
    before = earlier_run(out)
    small = [f for f in SMALL if f not in ("--device", "cpu")] if "cuda" in flags else SMALL
    if "--limit" in flags:
        small = small[:2] + small[6:]  # without SMALL's own --limit and --dev-size
    done = run_tune(*small, *flags, "--trials", "2", "--overwrite", "--out", str(out))
    assert done.returncode == 2
    assert message in one_error_line(done.stderr)
    assert snapshot(out) == before


def test_no_optimizer_name_falls_through_to_adam():
    import argparse as ap
    args = ap.Namespace(optimizer="no-such-optimizer", lr=1e-3, momentum=0.9, weight_decay=0.0)
    with pytest.raises(cli.UsageError, match="--optimizer: expected one of sgd, momentum, "
                                             "rmsprop, adam.*, got 'no-such-optimizer'"):
        cli._optimizer(args, [])


def test_a_study_where_no_trial_completed_exits_non_zero(tmp_path):
    out = tmp_path / "t"
    done = run_tune(*SMALL, "--epochs", "1", "--optimizer", "sgd", "--momentum", "0",
                    "--param", "lr=log:1e2:1e3", "--trials", "2", "--out", str(out))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    # the diverging trials' NumPy warnings come first
    assert "gpunet: error: no trial completed (2 failed)" in done.stderr.splitlines()[-1]
    assert "NonFiniteError" in done.stdout and "best:" not in done.stdout


def test_resume_with_trials_runs_up_to_that_many_in_all(tmp_path):
    """--trials with --resume is the study's new total, as Optuna users expect; one the
    study has reached already is refused. The best command trains what the best
    trial trained, to the last bit (issue 25.6, 25.9)."""
    out = tmp_path / "t"
    first = run_tune(*SMALL, "--epochs", "1", "--pruner", "none", "--param", "lr=log:1e-4:1e-1",
                     "--trials", "2", "--out", str(out))
    assert first.returncode == 0, first.stderr
    more = run_tune("--resume", "--trials", "3", "--out", str(out))
    assert more.returncode == 0, more.stderr
    study = tune.Study(str(out))
    assert sorted(t.number for t in study.trials()) == [0, 1, 2]
    assert json.loads((out / "tune.json").read_text())["trials"] == 3
    best = [line for line in more.stdout.splitlines() if line.startswith("best: ")][0]
    args = cli.build_parser().parse_args(best.split()[2:])
    assert args.lr == study.best(1)[0]["lr"]  # exactly
    fewer = run_tune("--resume", "--trials", "2", "--out", str(out))
    assert fewer.returncode == 2
    assert "--trials 2: " in one_error_line(fewer.stderr) and "has 3 trial(s) already" \
        in fewer.stderr


def test_the_best_command_reads_back_as_the_same_floats():
    flags = {"lr": 0.0012345678901234567, "momentum": 0.912345678912, "weight_decay": 3e-7}
    args = cli.build_parser().parse_args(cli.train_command(flags).split()[1:])
    assert (args.lr, args.momentum, args.weight_decay) == tuple(flags.values())


def test_resume_finds_the_storage_in_tune_json(tmp_path):
    """--resume without --storage continues the study where it is, not a new one that
    would run trial 0 again into the old trial's folder (issue 25.7)."""
    out, db = tmp_path / "t", tmp_path / "shared.db"
    first = run_tune(*SMALL, "--epochs", "1", "--param", "lr=log:1e-4:1e-1", "--trials", "1",
                     "--storage", f"sqlite:///{db}", "--out", str(out))
    assert first.returncode == 0, first.stderr
    trial0 = (out / "trials" / "000" / "metrics.csv").read_bytes()
    assert json.loads((out / "tune.json").read_text())["storage"] == f"sqlite:///{db}"
    more = run_tune("--resume", "--trials", "2", "--out", str(out))
    assert more.returncode == 0, more.stderr
    assert not (out / "study.db").exists()
    assert sorted(t.number for t in tune.Study(str(out)).trials()) == [0, 1]
    assert (out / "trials" / "000" / "metrics.csv").read_bytes() == trial0
    other = run_tune("--resume", "--out", str(out), "--storage", f"sqlite:///{tmp_path}/x.db")
    assert other.returncode == 2
    assert f"keeps its trials in sqlite:///{db}" in one_error_line(other.stderr)


def test_overwrite_and_a_second_run_in_a_shared_storage_start_new_studies(tmp_path):
    """--overwrite with an outside --storage replaced the files but reloaded the old
    study; a second run sharing the storage joined the first one's (issue 25.8)."""
    out, db = tmp_path / "t", f"sqlite:///{tmp_path / 'shared.db'}"
    common = [*SMALL, "--epochs", "1", "--pruner", "none", "--storage", db]
    first = run_tune(*common, "--param", "lr=choice:0.003", "--trials", "1", "--out", str(out))
    assert first.returncode == 0, first.stderr
    again = run_tune(*common, "--param", "lr=choice:0.002", "--trials", "1", "--overwrite",
                     "--out", str(out))
    assert again.returncode == 0, again.stderr
    study = tune.Study(str(out))
    assert [r["hyperparameters"] for r in study.rows()] == [{"lr": 0.002}]
    assert [s.study_name for s in optuna.get_all_study_summaries(db)] == [study.name]
    beside = run_tune(*common, "--param", "lr=choice:0.001", "--trials", "1",
                      "--out", str(tmp_path / "u"))
    assert beside.returncode == 0, beside.stderr
    assert [r["hyperparameters"] for r in tune.Study(str(tmp_path / "u")).rows()] == \
        [{"lr": 0.001}]
    assert len(study.trials()) == 1


@pytest.mark.parametrize("url, reason", [
    ("foo://bar", "Can't load plugin: sqlalchemy.dialects:foo"),
    ("sqlite:////no-such-dir/x/study.db", "unable to open database file"),
    ("not a url", "Could not parse SQLAlchemy URL"),
])
def test_a_storage_that_cannot_be_opened_is_one_line(tmp_path, url, reason):
    out = tmp_path / "t"
    before = earlier_run(out)
    done = run_tune(*SMALL, "--param", "lr=log:1e-3:1", "--storage", url, "--overwrite",
                    "--out", str(out))
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert line.startswith(f"gpunet: error: --storage {url}: expected a database URL") \
        and reason in line
    assert snapshot(out) == before


def test_each_trial_is_a_line_as_it_ends(tmp_path):
    """The old tune said nothing until every trial had ended (issue 25.26)."""
    out = tmp_path / "t"
    process = subprocess.Popen(
        [sys.executable, "-m", "gpunet", "tune", *SMALL, "--epochs", "2", "--pruner", "none",
         "--param", "lr=log:1e-4:1e-2", "--trials", "2", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
        # trial 1 has two epochs to train before the table: tune is still at work
        assert first.startswith("trial 0 complete: val acc ") and "lr=" in first
        assert process.poll() is None and not (out / "trials.txt").exists()
        rest, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert rest.startswith("trial 1 complete: ")


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

    callback = tune._ReportEpochs(Trial(), optuna, epochs=2)
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
