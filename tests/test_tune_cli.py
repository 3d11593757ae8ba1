"""`gpunet tune` on the command line: workers, Ctrl-C and --resume, --refine, the table,
what train would refuse refused before any trial, storages."""
import json
import signal
import subprocess
import sys
import time

import pytest

from gpunet import cli, tune
from gpunet.recipe import RunConfigError, train_command
from gpunet.recipe.building import build_optimizer

from .test_tune import ROOT, SMALL

optuna = pytest.importorskip("optuna", reason="gpunet tune needs Optuna (gpunet[tune])")


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
    with pytest.raises(RunConfigError, match="--optimizer: expected one of sgd, momentum, "
                                             "rmsprop, adam.*, got 'no-such-optimizer'"):
        build_optimizer(args, [])


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
    args = cli.build_parser().parse_args(train_command(flags).split()[1:])
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




def test_overwrite_removes_what_tune_wrote_and_nothing_else(tmp_path):
    """--overwrite removed all of OUT/trials/, a user's own trials/mine/ with it, where
    train --overwrite removes only its own named files."""
    out = tmp_path / "t"
    common = [*SMALL, "--epochs", "1", "--pruner", "none", "--out", str(out)]
    first = run_tune(*common, "--param", "lr=log:1e-3:1e-2", "--trials", "2")
    assert first.returncode == 0, first.stderr
    assert (out / "trials" / "001" / "metrics.csv").exists()
    (out / "trials" / "mine").mkdir()
    (out / "trials" / "mine" / "notes.txt").write_text("mine")
    (out / "trials" / "0123.txt").write_text("a file, not a trial's folder")
    (out / "README").write_text("mine too")
    refused = run_tune(*common, "--param", "lr=log:1e-3:1e-2", "--dev-size", "0", "--overwrite")
    assert refused.returncode == 2 and (out / "trials" / "001" / "metrics.csv").exists()
    again = run_tune(*common, "--param", "lr=choice:0.005", "--trials", "1", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["000", "0123.txt", "mine"]
    assert (out / "trials" / "mine" / "notes.txt").read_text() == "mine"
    assert (out / "README").read_text() == "mine too"
    assert [r["hyperparameters"] for r in tune.Study(str(out)).rows()] == [{"lr": 0.005}]
