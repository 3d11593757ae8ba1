"""Ctrl-C in a tuning worker at the awkward moments: inside Optuna's bookkeeping, or
swallowed where Python only prints "Exception ignored". The SIGINT is raised at a
chosen call (signal.raise_signal: its handler runs as that call returns), not timed;
training is a stand-in that reports two epochs, so only the bookkeeping is real."""
import signal
import types

import pytest

from gpunet import tune
from gpunet.tune import trials as tune_trials

optuna = pytest.importorskip("optuna", reason="gpunet tune needs Optuna (gpunet[tune])")

TRAIN = {"dataset": "synthetic", "limit": 400, "dev_size": 100, "batch_size": 32,
         "device": "cpu", "epochs": 2}
TRIALS = 4


def fake_training(swallow_at=None):
    """run_training's stand-in: epochs 1 and 2 at val accuracy 0.5 + lr; with
    ``swallow_at`` a trial number, a SIGINT during that trial whose KeyboardInterrupt
    something swallows (a weakref callback, a __del__)."""
    def run_training(config, callbacks, **kwargs):
        history = {"val_accuracy": []}
        for epoch in range(1, config.epochs + 1):
            if swallow_at is not None and config.out.endswith(f"{swallow_at:03d}"):
                try:
                    signal.raise_signal(signal.SIGINT)
                except KeyboardInterrupt:
                    pass
            history["val_accuracy"].append(0.5 + config.lr)
            run = types.SimpleNamespace(history=history, epoch=epoch)
            for callback in callbacks:
                callback.on_epoch_end(run)
        return types.SimpleNamespace(history=history)
    return run_training


def sigint_at(monkeypatch, owner, method, when):
    """SIGINT raised once, as ``owner.method`` starts a call for which ``when(*args)``."""
    original = getattr(owner, method)
    fired = []

    def wrapped(*args, **kwargs):
        if not fired and when(*args, **kwargs):
            fired.append(True)
            signal.raise_signal(signal.SIGINT)
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, method, wrapped)
    return fired


RDB = optuna.storages.RDBStorage
States = optuna.trial.TrialState
MOMENTS = {
    # the tell that writes trial 0 complete
    "state write": (RDB, "set_trial_state_values",
                    lambda s, i, state, values=None: state.is_finished()),
    # the objective's own writes once training has ended
    "user attr": (RDB, "set_trial_user_attr", lambda s, i, key, value: key == "best_epoch"),
    # ask() creating trial 1
    "new trial": (RDB, "_create_new_trial", lambda s, study_id, template_trial=None: len(
        s.get_all_trials(study_id, deepcopy=False)) == 1),
    # the heartbeat thread stopped as the trial ends (outside optimize's try)
    "heartbeat": (optuna.storages._heartbeat.HeartbeatThread, "join", lambda *a: True),
    # an epoch's report, inside training
    "report": (RDB, "set_trial_intermediate_value", lambda *a: True),
}


def swallowing(function):
    """``function`` with a SIGINT at its start whose KeyboardInterrupt is swallowed."""
    def wrapped(*args, **kwargs):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass
        return function(*args, **kwargs)
    return wrapped


@pytest.mark.parametrize("moment", [*MOMENTS, "swallowed", "swallowed loading", "training"])
def test_ctrl_c_anywhere_stops_the_study_and_resume_reruns_what_it_cut(
        tmp_path, monkeypatch, moment):
    monkeypatch.setattr(tune_trials, "run_training",
                        fake_training(swallow_at=0 if moment == "swallowed" else None))
    if moment in MOMENTS:
        fired = sigint_at(monkeypatch, *MOMENTS[moment])
    elif moment == "swallowed loading":  # as the worker loads the study, before any trial
        monkeypatch.setattr(optuna, "load_study", swallowing(optuna.load_study))
        fired = [True]
    elif moment == "training":
        fired = sigint_at(monkeypatch, tune_trials._ReportEpochs, "on_epoch_end",
                          lambda *a: True)
    out = str(tmp_path / "t")
    with pytest.raises(KeyboardInterrupt):
        tune.search([tune.log_uniform("lr", 1e-4, 1e-1)], TRAIN, out, trials=TRIALS,
                    pruner="none", threads=1)
    monkeypatch.undo()
    assert moment == "swallowed" or fired
    study = tune.Study(out)
    cut = study.trials()
    # each trial recorded: none left RUNNING, none failed as if on its own
    assert all(t.state == States.COMPLETE
               or (t.state == States.FAIL and t.user_attrs.get("interrupted")) for t in cut), \
        [(t.number, t.state.name, t.user_attrs) for t in cut]
    assert len(cut) < TRIALS  # it stopped
    interrupted = {t.number: t.user_attrs["hyperparameters"] for t in cut
                   if t.state == States.FAIL}

    monkeypatch.setattr(tune_trials, "run_training", fake_training())
    study.run(TRIALS, 1, "random", "none", 0, 1, [])
    done = study.trials()
    assert study.finished() == TRIALS
    assert sum(t.state == States.COMPLETE for t in done) == TRIALS
    reruns = {t.user_attrs["rerun_of"]: t for t in done if "rerun_of" in t.user_attrs}
    assert sorted(reruns) == sorted(interrupted)  # each cut trial run again, once
    for number, values in interrupted.items():
        assert reruns[number].state == States.COMPLETE
        assert reruns[number].user_attrs["hyperparameters"] == values
