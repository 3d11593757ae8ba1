"""The run recipe as library code (issue 27): ``run_training(RunConfig(...))`` trains
without the CLI, the CLI takes its defaults from RunConfig, and nothing in the
library imports ``gpunet.cli``."""
import ast
import csv
import dataclasses
import math
import pathlib
import re

import pytest

from gpunet.io import read_checkpoint
from gpunet.recipe import RunConfig, RunConfigError, RunResult, run_defaults, run_training

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
