"""The run recipe as library code (issue 27): ``run_training(RunConfig(...))`` trains
without the CLI, the CLI takes its defaults from RunConfig, and nothing in the
library imports ``gpunet.cli``."""
import ast
import csv
import dataclasses
import math
import os
import pathlib
import re

import pytest

from gpunet.history import History
from gpunet.io import read_checkpoint
from gpunet.recipe import (
    RunConfig,
    RunConfigError,
    RunResult,
    RunStatus,
    run_defaults,
    run_training,
)
from gpunet.recipe.files import RUN_FILES, SaveEachEpoch, what_was_saved

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gpunet"
TINY = dict(dataset="synthetic", limit=200, dev_size=50, batch_size=32, device="cpu",
            progress=False, seed=3)


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports, at its top or inside a function, relative
    imports resolved (``from . import cli`` in gpunet/ is ``gpunet.cli``)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            base = ".".join(base + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_the_library_never_imports_the_cli():
    """tune, train and the recipe above all (tune used to build an argparse Namespace
    and call gpunet.cli.run_training): only the CLI itself imports gpunet.cli."""
    library = [p for p in sorted(PACKAGE.rglob("*.py"))
               if "cli" not in p.relative_to(PACKAGE).parts[:1]
               and p.relative_to(PACKAGE).parts[0] not in ("cli.py", "__main__.py")]
    names = {str(p.relative_to(PACKAGE)) for p in library}
    assert "train.py" in names
    assert "tune.py" in names or "tune/__init__.py" in names
    importers = {str(p.relative_to(PACKAGE)): sorted(m for m in _imported_modules(p)
                                                     if m == "gpunet.cli"
                                                     or m.startswith("gpunet.cli."))
                 for p in library}
    assert {name: found for name, found in importers.items() if found} == {}


def test_run_training_as_a_library_call(tmp_path):
    out = tmp_path / "run"
    result = run_training(RunConfig(**TINY, epochs=2, out=str(out)), announce=False)
    assert isinstance(result, RunResult)
    assert result.history["epoch"] == [1, 2] and len(result.history.steps) == 2 * 5
    for row in result.history.rows:
        assert all(math.isfinite(row[key]) for key in ("loss", "val_loss", "time"))
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["val_accuracy"] <= 1
    assert result.final == result.history.rows[-1]
    assert result.test["images"] == 500 and 0 <= result.test["accuracy"] <= 1
    assert math.isfinite(result.test["loss"])
    # what it says it saved is there, and holds this run
    assert (result.out, result.last, result.best) == (str(out), str(out / "last.npz"),
                                                      str(out / "best.npz"))
    header, _ = read_checkpoint(result.last)
    assert header["meta"]["epoch"] == 2 and header["meta"]["flags"]["dataset"] == "synthetic"
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in rows] == pytest.approx(result.history["loss"])


def test_a_library_resume_takes_the_saved_flags(tmp_path):
    """Flags left at their defaults are the checkpoint's (the run trained on synthetic
    images, not the default fashion-mnist); one set to another value is refused."""
    out = str(tmp_path / "run")
    run_training(RunConfig(**TINY, epochs=1, out=out), test=False, announce=False)
    result = run_training(RunConfig(out=out, resume=True, epochs=2, progress=False),
                          test=False, announce=False)
    assert result.config.dataset == "synthetic" and result.config.limit == 200
    assert result.history["epoch"] == [1, 2] and result.test is None
    with pytest.raises(RunConfigError, match="was trained with --seed 3; drop --seed 4"):
        run_training(RunConfig(out=out, resume=True, epochs=3, seed=4), announce=False)


@pytest.mark.parametrize("changes, message", [
    ({"epochs": 0}, "--epochs: expected a positive integer, got 0"),
    ({"optimizer": "lamb"}, "--optimizer: takes sgd, momentum, rmsprop, adam, adamw; got 'lamb'"),
    ({"batch_norm": "yes"}, "--batch-norm: is on or off (true or false), got 'yes'"),
    ({"lr": float("nan")}, "--lr: expected a finite number, got 'nan'"),
    ({"schedule": "step"}, "--schedule step needs --decay"),
    ({"resume": True, "overwrite": True},
     "--resume continues the run in --out and --overwrite replaces it: give one of them"),
    # numbers as text, from Python: refused in one line (they reached a comparison)
    ({"lr": "0.1"}, "--lr: expected a number, got '0.1'"),
    ({"seed": "3"}, "--seed: expected a whole number, got '3'"),
    ({"dev_size": "0.1"},
     "--dev-size: expected a count (0 or more) or a fraction between 0 and 1, got '0.1'"),
    ({"lr": True}, "--lr: expected a number, got True"),
    # batch norm's variance needs two examples: known from the flags, before any data
    ({"batch_norm": True, "batch_size": 1},
     "--batch-size 1: --batch-norm needs at least 2 examples per batch in training"),
    ({"batch_norm": True, "limit": 1},
     "--limit 1: leaves 1 training image(s) after --dev-size 0.1; --batch-norm needs at "
     "least 2, for its variance (give --limit 2 or more)"),
    ({"batch_norm": True, "limit": 2, "dev_size": 1}, "--limit 2: leaves 1 training image(s) "
     "after --dev-size 1; --batch-norm needs at least 2, for its variance (give --limit 3"),
])
def test_run_config_checks_are_one_line_naming_the_flag(changes, message):
    with pytest.raises(RunConfigError, match="^" + re.escape(message)) as info:
        RunConfig(**changes).check()
    assert "\n" not in str(info.value)


def test_the_cli_takes_its_run_flags_and_defaults_from_run_config():
    from gpunet import cli
    parser = cli.build_parser()
    for sub in (parser.train_parser, parser.tune_parser):
        defaults = {a.dest: a.default for a in sub._actions if a.dest in run_defaults()}
        assert defaults == run_defaults()
    train = {a.dest: a.default for a in parser.train_parser._actions}
    for field in dataclasses.fields(RunConfig):
        if field.name != "progress":
            assert train[field.name] == field.default, field.name


# -- Ctrl-C says what last.npz holds: a save before validation, a resumed run's checkpoint --
class _InterruptAt:
    """A callback raising KeyboardInterrupt where Ctrl-C would land: in ``hook`` of
    epoch ``epoch`` (after the run's own callbacks, the saver first)."""

    def __init__(self, hook, epoch):
        self.hook, self.epoch = hook, epoch

    def on_step_end(self, run):
        if self.hook == "on_step_end" and run.history.partial["epoch"] == self.epoch:
            raise KeyboardInterrupt

    def on_validation_start(self, run):
        if self.hook == "on_validation_start" and run.history.partial["epoch"] == self.epoch:
            raise KeyboardInterrupt

    def on_epoch_end(self, run):
        if self.hook == "on_epoch_end" and run.epoch == self.epoch:
            raise KeyboardInterrupt


def _interrupted(config, hook, epoch) -> tuple[str, RunStatus]:
    status = RunStatus()
    with pytest.raises(KeyboardInterrupt):
        run_training(config, [_InterruptAt(hook, epoch)], announce=False, status=status)
    return what_was_saved(status.config, status.saver), status


@pytest.mark.parametrize("epoch", [1, 2])
def test_ctrl_c_during_validation_names_the_training_saved_before_it(tmp_path, epoch):
    out = tmp_path / "run"
    config = RunConfig(**TINY, epochs=3, out=str(out))
    said, _ = _interrupted(config, "on_validation_start", epoch)
    # it said "nothing was saved; run is as it was" (epoch 1), "after epoch 1" (epoch 2)
    assert said.startswith(f"saved {out / 'last.npz'} with epoch {epoch}'s training, before "
                           "its validation"), said
    assert said.endswith(f"continue with: gpunet train --resume --out {out}")
    meta = read_checkpoint(str(out / "last.npz"))[0]["meta"]
    assert meta["history"]["partial"]["epoch"] == epoch and meta["epoch"] == epoch - 1
    assert meta["history"]["partial"]["seen"] == 150
    result = run_training(RunConfig(out=str(out), resume=True, progress=False), test=False,
                          announce=False)
    assert result.history["epoch"] == [1, 2, 3]


def test_ctrl_c_in_a_resumed_run_says_whether_it_saved_and_how_to_go_on(tmp_path):
    out = tmp_path / "run"
    run_training(RunConfig(**TINY, epochs=1, out=str(out)), test=False, announce=False)
    before = (out / "last.npz").read_bytes()
    more = RunConfig(out=str(out), resume=True, epochs=3, progress=False)
    said, _ = _interrupted(more, "on_step_end", 2)
    assert said == (f"nothing of this run was saved; {out / 'last.npz'} is as it was (after "
                    f"epoch 1); {out / 'best.npz'} holds the best epoch so far; continue "
                    f"with: gpunet train --resume --out {out} --epochs 3")
    assert (out / "last.npz").read_bytes() == before
    # the checkpoint still says --epochs 1: without --epochs 3 the resume is refused
    with pytest.raises(RunConfigError, match="has done 1 epoch"):
        run_training(RunConfig(out=str(out), resume=True, progress=False), announce=False)
    said, _ = _interrupted(more, "on_validation_start", 2)
    assert said.startswith(f"saved {out / 'last.npz'} with epoch 2's training"), said
    assert said.endswith(f"--resume --out {out}")  # the checkpoint has this run's --epochs 3
    assert read_checkpoint(str(out / "last.npz"))[0]["meta"]["flags"]["epochs"] == 3


def test_ctrl_c_after_the_last_epoch_saved_offers_evaluate_not_a_refused_resume(tmp_path):
    out = tmp_path / "run"
    said, _ = _interrupted(RunConfig(**TINY, epochs=2, out=str(out)), "on_epoch_end", 2)
    # it offered "gpunet train --resume --out run", refused: the run had done its 2 epochs
    assert said == (f"saved {out / 'last.npz'} after epoch 2, the last: training is done; "
                    f"test it with: gpunet evaluate {out / 'last.npz'}")
    with pytest.raises(RunConfigError, match="has done 2 epoch"):
        run_training(RunConfig(out=str(out), resume=True, progress=False), announce=False)


class _Saves:
    """A Run whose save writes ``last.npz`` (or not) and is then interrupted: Ctrl-C
    landing after the rename that publishes a save, or before it."""

    def __init__(self, publishes):
        self.publishes = publishes
        self.writer, self.epoch = True, 1
        self.history = History(partial={"epoch": 2})

    def save(self, path, **meta):
        if self.publishes:
            pathlib.Path(path + ".new").write_bytes(b"epoch 2's training")
            os.replace(path + ".new", path)
        raise KeyboardInterrupt


@pytest.mark.parametrize("publishes", [True, False])
def test_a_save_interrupted_around_its_rename_is_reported_as_it_landed(tmp_path, publishes):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.npz").write_bytes(b"epoch 1")
    saver = SaveEachEpoch(str(out), {}, resumed={"epoch": 1, "history": {"rows": []}})
    with pytest.raises(KeyboardInterrupt):
        saver.on_validation_start(_Saves(publishes))
    config = RunConfig(out=str(out), resume=True)
    said = what_was_saved(config, saver)
    if publishes:
        assert said.startswith(f"saved {out / 'last.npz'} with epoch 2's training"), said
    else:
        assert said.startswith(f"nothing of this run was saved; {out / 'last.npz'} is as it "
                               "was (after epoch 1)"), said


def test_ctrl_c_before_the_first_save_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "run"
    said, status = _interrupted(RunConfig(**TINY, epochs=2, out=str(out)), "on_step_end", 1)
    assert said == f"nothing of this run was saved (no epoch's training finished); {out} is " \
        "as it was"
    assert not [name for name in os.listdir(out) if name in RUN_FILES]


def test_a_resume_conflict_names_the_flags_as_typed(tmp_path):
    out = str(tmp_path / "run")
    run_training(RunConfig(**TINY, epochs=1, out=out), test=False, announce=False)
    typed = RunConfig(out=out, resume=True, epochs=2, schedule="cosine", clip_grad_norm=1.0)
    with pytest.raises(RunConfigError) as info:
        run_training(typed, announce=False, given={"schedule", "clip_grad_norm", "epochs"})
    assert "was trained with no --schedule, no --clip-grad-norm; drop --schedule cosine, " \
        "--clip-grad-norm 1.0 to continue it" in str(info.value)
    assert "None" not in str(info.value)  # it said --schedule None


@pytest.mark.parametrize("limit, dev_size", [(2, 0.1), (3, 0.5), (3, 1), (4, 2)])
def test_batch_norm_takes_a_limit_that_leaves_two_to_train_on(limit, dev_size):
    RunConfig(batch_norm=True, batch_size=2, limit=limit, dev_size=dev_size).check()
