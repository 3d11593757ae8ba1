"""The command line: real runs on small data, and misuse that exits 2 in one line.
Commands that fail leave earlier runs untouched; --resume, --overwrite, Ctrl-C and a
full disk each say what was saved and how to go on (issues 15 and 25)."""
import csv
import os
import shlex
import subprocess
import sys
import warnings

import pytest

import gpunet
from gpunet.cli import main

from .helpers import HAS_MATPLOTLIB, gpunet_cli, idx_images, idx_labels
from .test_distributed import MPIEXEC, needs_mpiexec

QUICK = ["--dataset", "synthetic", "--limit", "300", "--dev-size", "60", "--batch-size", "32",
         "--no-progress", "--device", "cpu", "--seed", "1"]
# the same run on the device GPUNET_DEVICE names (cli() below names the CPU)
SMALL_RUN = ["--dataset", "synthetic", "--limit", "300", "--dev-size", "60", "--batch-size",
             "32", "--no-progress", "--seed", "1"]
SMALL_RUN_1_EPOCH = [*SMALL_RUN, "--epochs", "1"]


def run_cli(*args, env=None):
    """``python -m gpunet ARGS`` in a fresh process: (returncode, stdout, stderr)."""
    full_env = dict(os.environ, **(env or {}))
    out = subprocess.run([sys.executable, "-m", "gpunet", *args], capture_output=True,
                         text=True, timeout=300, env=full_env)
    return out.returncode, out.stdout, out.stderr


def test_train_writes_metrics_curves_checkpoints_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy:" in printed
    assert sorted(os.listdir(out)) == ["best.npz", *["curves.png"] * HAS_MATPLOTLIB,
                                       "last.npz", "metrics.csv"]
    assert main(["train", "--epochs", "3", "--resume", "--out", str(out), *QUICK]) == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[-1]["val_accuracy"]) > 0.5
    capsys.readouterr()
    assert main(["evaluate", str(out / "last.npz"), "--device", "cpu"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("loss ") and "accuracy" in line and "synthetic test images" in line


# On PYTHONPATH as sitecustomize: a process where matplotlib is not installed
BLOCK_MATPLOTLIB = """
import sys


class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, NoMatplotlib())
"""


def test_train_without_matplotlib_writes_no_curves_and_says_so_once(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_MATPLOTLIB)
    out = tmp_path / "run"
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    code, stdout, err = run_cli("train", "--epochs", "2", "--out", str(out), *QUICK,
                                env={"PYTHONPATH": path})
    assert code == 0, err
    assert "test accuracy:" in stdout
    assert sorted(os.listdir(out)) == ["best.npz", "last.npz", "metrics.csv"]
    notes = [line for line in err.splitlines() if "matplotlib" in line]
    assert notes == ["gpunet: no curves.png: plotting needs matplotlib (pip install matplotlib)"]


def test_summary_gradcheck_info(capsys):
    assert main(["summary", "lenet5"]) == 0
    assert "total parameters: 61,706" in capsys.readouterr().out
    assert main(["summary", "alexnet_cifar", "--input-shape", "3,32,32"]) == 0
    assert "total parameters: 1,503,050" in capsys.readouterr().out
    assert main(["gradcheck", "lenet5", "--max-per-param", "3", "--device", "cpu"]) == 0
    assert ": great" in capsys.readouterr().out
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "auto device:" in out


def test_summary_names_the_input_shape_flag(capsys):
    assert main(["summary", "alexnet_cifar", "--input-shape", "1,28,28"]) == 2
    err = capsys.readouterr().err.strip()
    # it named summary()'s argument, input_shape, which the user did not type
    assert err.startswith("gpunet: error: --input-shape 1,28,28: expected (C, H, W) with C = 3 "
                          "for the first layer"), err


@pytest.mark.parametrize("spec,fragment", [
    ("bogus", "GPUNET_DEVICE: expected 'cpu', 'cuda', 'cuda:N' or 'auto', got 'bogus'"),
    ("cuda:7", "GPUNET_DEVICE=cuda:7: cannot use cuda:7")])
def test_info_refuses_the_device_train_refuses(spec, fragment, tmp_path):
    """``gpunet info`` reads GPUNET_DEVICE as train does: the same one-line error and
    exit 2 (it said nothing and exited 0), and names the device it would use."""
    code, out, err = run_cli("info", env={"GPUNET_DEVICE": spec})
    train = run_cli("train", *QUICK[:-4], "--out", str(tmp_path / "run"),
                    env={"GPUNET_DEVICE": spec})
    assert (code, train[0]) == (2, 2), (err, train[2])
    assert fragment in err and err.strip().splitlines()[-1] == train[2].strip().splitlines()[-1]
    code, out, err = run_cli("info", env={"GPUNET_DEVICE": "cpu"})
    assert code == 0 and "device: cpu (GPUNET_DEVICE=cpu)" in out


def test_no_gpu_says_so_and_only_once_when_no_device_was_asked(monkeypatch, tmp_path):
    """CuPy on a machine without /dev/nvidia*: the reason is that no GPU was found (not
    CuPy's 'driver version is insufficient'); with no --device the fallback is said on
    the first command, not on every one; asked for, or for another reason, always."""
    from gpunet import backend
    from gpunet.recipe.device import use_device

    class Runtime:
        @staticmethod
        def getDeviceCount():
            raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                               "insufficient for CUDA runtime version")

    monkeypatch.setattr(backend, "_cupy", type("Cupy", (), {"cuda": type("C", (), {
        "runtime": Runtime})}))
    monkeypatch.setattr(backend, "_current", None)
    monkeypatch.setattr(backend, "_gpu_device_files", lambda: [])
    assert backend.cuda_unavailable_reason() == backend.NO_GPU
    monkeypatch.setenv("GPUNET_CACHE", str(tmp_path))
    monkeypatch.delenv("GPUNET_DEVICE", raising=False)

    def fallback_warnings(spec):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            use_device(spec)
        return [str(w.message) for w in caught]

    assert fallback_warnings(None) == [f"using the CPU because {backend.NO_GPU}"]
    assert fallback_warnings(None) == []
    assert len(fallback_warnings("auto")) == 1  # --device auto: asked for
    monkeypatch.setattr(backend, "_gpu_device_files", lambda: ["nvidia0"])
    assert "insufficient" in backend.cuda_unavailable_reason()
    assert len(fallback_warnings(None)) == 1  # a GPU the driver cannot use: every time


def test_python_dash_m_and_the_entry_point_agree():
    code, out, _ = run_cli("summary", "lenet5_notes")
    assert code == 0 and "62,958" in out


MISUSES = [
    (["frobnicate"], "invalid choice"),
    (["--no-such-flag"], "required: command"),  # (nothing at all: the command list, exit 1)
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "two"], "--epochs"),
    (["train", "--model", "resnet"], "--model"),
    (["train", "--device", "tpu", *QUICK[:-4]], "device"),
    (["train", "--device", "cuda:0", *QUICK[:-4]], "cannot use cuda:0"),
    (["train", "--dataset", "cifar10", "--data-root", "/nonexistent", "--device", "cpu"],
     "cifar10"),
    (["train", "--resume", "--out", "/nonexistent/run", *QUICK], "no checkpoint"),
    (["evaluate", "/nonexistent/ck.npz"], "no such checkpoint"),
    (["summary", "lenet5", "--input-shape", "3,x,32"], "C,H,W"),
    (["train", "--model", "alexnet_cifar", "--batch-norm", *QUICK], "lenet5 only"),
]


@pytest.mark.parametrize("args,fragment", MISUSES, ids=[" ".join(a[:2]) for a, _ in MISUSES])
def test_misuse_exits_2_with_one_line(args, fragment, tmp_path):
    if "cuda:0" in args:
        from gpunet.backend import cuda_unavailable_reason
        if cuda_unavailable_reason() is None:
            pytest.skip("a GPU is usable here")
    code, out, err = run_cli(*args, env={"GPUNET_CACHE": str(tmp_path)})
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if not line.startswith("gpunet: warning:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("gpunet: error:") and fragment in lines[0], err
    assert "Traceback" not in err


def test_corrupt_checkpoint_exits_2(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run_cli("evaluate", str(bad))
    assert code == 2 and "bad.npz" in err and "Traceback" not in err


def test_resume_keeps_the_best_score_and_refuses_another_seed(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(out), *QUICK]) == 0
    import gpunet
    from gpunet.train import ModelCheckpoint
    header, _ = gpunet.io.read_checkpoint(out / "last.npz")
    best_so_far = max(r["val_accuracy"] for r in header["meta"]["history"]["rows"])
    seen = []
    original = ModelCheckpoint.on_epoch_end

    def spy(self, run):
        seen.append(self.best)  # what the callback compares the resumed epoch against
        return original(self, run)

    monkeypatch.setattr(ModelCheckpoint, "on_epoch_end", spy)
    assert main(["train", "--epochs", "3", "--resume", "--out", str(out), *QUICK]) == 0
    assert seen[0] == best_so_far  # not -inf: a worse epoch cannot overwrite best.npz
    other_seed = [a if a != "1" else "2" for a in QUICK]
    assert main(["train", "--epochs", "4", "--resume", "--out", str(out), *other_seed]) == 2
    assert "--seed 1" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_unless_the_traceback_is_asked_for(monkeypatch, capsys):
    """A bug of ours (an exception no handler names) still ends in one line, exit 1;
    GPUNET_TRACEBACK=1 lets the traceback through."""
    from gpunet import cli

    def broken(args):
        raise RuntimeError("something inside broke")

    monkeypatch.setitem(cli.COMMANDS, "info", broken)
    monkeypatch.delenv("GPUNET_TRACEBACK", raising=False)
    assert main(["info"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "gpunet: internal error: RuntimeError: something inside broke (a bug in gpunet")
    monkeypatch.setenv("GPUNET_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="something inside broke"):
        main(["info"])


def test_ctrl_c_wrapped_by_a_library_is_still_an_interrupt(monkeypatch, capsys):
    """Python wraps a KeyboardInterrupt raised while a class is created (matplotlib's
    import, when Ctrl-C lands there) in a RuntimeError: still exit 130, not an
    'internal error'."""
    from gpunet import cli

    def interrupted_inside_an_import(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("Error calling __set_name__ on 'x'") from exc

    monkeypatch.setitem(cli.COMMANDS, "info", interrupted_inside_an_import)
    assert main(["info"]) == 130
    assert capsys.readouterr().err.strip() == "gpunet: interrupted"


def cli(*args, env=None):
    return run_cli(*args, env={"GPUNET_DEVICE": "cpu", **(env or {})})


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def _one_error_line(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpunet: error: "), stderr
    return lines[0]


def test_cli_explicit_data_root_without_the_files(tmp_path):
    code, _, err = cli("train", "--dataset", "fashion-mnist", "--data-root",
                       str(tmp_path / "no-such-dir"), "--out", str(tmp_path / "run"))
    assert code == 2 and "does not hold train-images-idx3-ubyte" in _one_error_line(err)


def test_cli_a_split_that_leaves_nothing_to_train_on(tmp_path):
    code, _, err = cli("train", "--dataset", "synthetic", "--limit", "1000", "--dev-size",
                       "5000", "--out", str(tmp_path / "run"))
    line = _one_error_line(err)
    assert code == 2 and "--dev-size 5000 would leave 0 of the 1,000" in line
    assert "--dev-size 500 or less" in line


def test_cli_never_overwrites_an_earlier_run(tmp_path):
    out = tmp_path / "run"
    assert cli("train", *SMALL_RUN_1_EPOCH, "--out", str(out))[0] == 0
    before = _snapshot(out)
    code, _, err = cli("train", *SMALL_RUN_1_EPOCH, "--out", str(out))
    line = _one_error_line(err)
    assert code == 2 and "holds an earlier run" in line and "--resume" in line \
        and "--overwrite" in line
    assert _snapshot(out) == before
    assert cli("train", *SMALL_RUN_1_EPOCH, "--out", str(out), "--overwrite")[0] == 0


def test_cli_resume_continues_the_run_or_names_the_flags_it_would_change(tmp_path):
    out = tmp_path / "run"
    assert cli("train", *SMALL_RUN_1_EPOCH, "--lr", "0.01", "--out", str(out))[0] == 0
    before = _snapshot(out)
    code, _, err = cli("train", *SMALL_RUN, "--epochs", "2", "--lr", "0.1", "--batch-size",
                       "16", "--resume", "--out", str(out))
    line = _one_error_line(err)
    assert code == 2 and "--lr 0.01" in line and "--batch-size 32" in line
    assert "drop --lr 0.1, --batch-size 16" in line
    assert _snapshot(out) == before
    # without them the run continues with its own settings, whatever the defaults are
    code, out_text, err = cli("train", "--dataset", "synthetic", "--no-progress", "--epochs",
                              "2", "--resume", "--out", str(out))
    assert code == 0, err
    assert "(240 images, 60 for validation)" in out_text
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[2].split(",")[5].startswith("0.01")  # lr column


def test_cli_resume_with_another_model_says_so_in_one_line(tmp_path):
    out = tmp_path / "run"
    assert cli("train", *SMALL_RUN_1_EPOCH, "--out", str(out))[0] == 0
    code, _, err = cli("train", *SMALL_RUN_1_EPOCH, "--resume", "--out", str(out))  # 1 again
    assert code == 2 and "has done 1 epoch(s) already" in _one_error_line(err)
    code, _, err = cli("train", *SMALL_RUN_1_EPOCH, "--model", "alexnet_cifar", "--resume", "--out",
                       str(out))
    line = _one_error_line(err)
    assert code == 2 and "was trained with --model lenet5" in line and len(line) < 300


@pytest.mark.parametrize("flags,message", [
    (["--lr", "-1"], "--lr: expected a number > 0, got -1.0"),
    (["--momentum", "1.5"], "--momentum: expected a number in [0, 1), got 1.5"),
    (["--flip", "2"], "--flip: expected a probability in [0, 1], got 2.0"),
    (["--schedule", "step"], "--schedule step needs --decay"),
    (["--schedule", "exponential", "--decay", "1"], "must be between 0 and 1, got 1.0"),
    (["--decay", "0.5"], "--decay needs --schedule"),
    (["--seed", "-3"], "--seed: expected 0 or more, got -3"),
], ids=["lr", "momentum", "flip", "no-decay", "decay-1", "decay-alone", "seed"])
def test_cli_flags_are_checked_first_and_named_as_typed(tmp_path, flags, message):
    out = tmp_path / "run"
    code, _, err = cli("train", "--dataset", "fashion-mnist", "--data-root",
                       str(tmp_path / "nowhere"), *flags, "--out", str(out))
    assert code == 2 and message in _one_error_line(err)  # before the data is looked for
    assert not out.exists()


def test_cli_step_schedule_decays_every_step_size_epochs(tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("train", *SMALL_RUN, "--epochs", "3", "--schedule", "step", "--decay",
                       "0.5", "--step-size", "2", "--lr", "0.01", "--out", str(out))
    assert code == 0, err
    rates = [float(r.split(",")[5]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert rates == pytest.approx([0.01, 0.01, 0.005])  # it used to stay at --decay 1.0


def test_cli_out_must_be_a_folder_it_can_write_in(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    code, _, err = cli("train", *SMALL_RUN_1_EPOCH, "--out", str(a_file))
    assert code == 2 and "is a file" in _one_error_line(err)
    assert a_file.read_text() == "keep me"
    code, _, err = cli("train", *SMALL_RUN_1_EPOCH, "--out", "/proc/gpunet-cannot-write-here")
    assert code == 2 and "--out: cannot write in /proc/gpunet-cannot-write-here" \
        in _one_error_line(err)


def test_cli_follows_gpunet_device(tmp_path):
    code, _, err = cli("train", *SMALL_RUN_1_EPOCH, "--out", str(tmp_path / "a"))
    assert code == 0 and "warning" not in err  # GPUNET_DEVICE=cpu: no CUDA probe, no warning
    code, _, err = cli("train", *SMALL_RUN_1_EPOCH, "--out", str(tmp_path / "b"),
                       env={"GPUNET_DEVICE": "bogus"})
    assert code == 2 and "GPUNET_DEVICE: expected 'cpu'" in _one_error_line(err)


def test_cli_batch_norm_with_a_last_batch_of_one(tmp_path):
    # 300 - 59 = 241 = 6 * 40 + 1
    code, _, err = cli("train", *SMALL_RUN[:-2], "--dev-size", "59", "--batch-size", "40",
                       "--batch-norm", "--out", str(tmp_path / "run"))
    assert code == 0, err


def test_cli_ctrl_c_says_what_was_saved(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gpunet", "train", *SMALL_RUN, "--epochs",
                             "1000", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GPUNET_DEVICE": "cpu"})
    deadline = time.monotonic() + 120
    while not (out / "metrics.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"interrupted; saved {out / 'last.npz'} after epoch" in err
    assert f"gpunet train --resume --out {out}" in err


# On PYTHONPATH as sitecustomize: Ctrl-C after epoch 1 was saved, landing inside code
# run from a string, as a namedtuple's generated methods are while matplotlib's import
# (curves.png, at the first epoch's end) is under way: where a real Ctrl-C killed the
# process by SIGINT (status -2) about once in 90 tries
INTERRUPT_INSIDE_STRING_CODE = """
import gpunet.recipe.files

_saved = gpunet.recipe.files.SaveEachEpoch.on_epoch_end


def on_epoch_end(self, run):
    answer = _saved(self, run)
    if run.epoch == 1:
        exec("raise KeyboardInterrupt")
    return answer


gpunet.recipe.files.SaveEachEpoch.on_epoch_end = on_epoch_end
"""


def test_cli_ctrl_c_inside_string_code_still_exits_130(tmp_path):
    # `python -m gpunet` (the console script exits through another path, unaffected)
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "gpunet", "train", *SMALL_RUN, "--epochs", "3",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GPUNET_DEVICE": "cpu",
                               **_with_sitecustomize(tmp_path, INTERRUPT_INSIDE_STRING_CODE)})
    assert done.returncode == 130, done.stderr
    assert f"interrupted; saved {out / 'last.npz'} after epoch 1" in done.stderr


# On PYTHONPATH as sitecustomize: Ctrl-C right after epoch 1 was saved (every rank)
INTERRUPT_AFTER_EPOCH_1 = """
import gpunet.recipe.files

_saved = gpunet.recipe.files.SaveEachEpoch.on_epoch_end


def on_epoch_end(self, run):
    answer = _saved(self, run)
    if run.epoch == 1:
        raise KeyboardInterrupt
    return answer


gpunet.recipe.files.SaveEachEpoch.on_epoch_end = on_epoch_end
"""


# On PYTHONPATH as sitecustomize: Ctrl-C during epoch 2's validation, once its training
# was saved (every rank)
INTERRUPT_AT_VALIDATION_2 = """
import gpunet.recipe.files

_saved = gpunet.recipe.files.SaveEachEpoch.on_validation_start


def on_validation_start(self, run):
    _saved(self, run)
    if run.history.partial["epoch"] == 2:
        raise KeyboardInterrupt


gpunet.recipe.files.SaveEachEpoch.on_validation_start = on_validation_start
"""


# On PYTHONPATH as sitecustomize: the disk fills up at the 4th checkpoint written
# (epoch 1 writes last.npz before validating, last.npz and best.npz after it)
DISK_FULL_AT_SAVE_4 = """
import errno
import numpy

_savez, _calls = numpy.savez, []


def savez(file, *args, **kwds):
    _calls.append(1)
    if len(_calls) == 4:
        raise OSError(errno.ENOSPC, "No space left on device", getattr(file, "name", file))
    return _savez(file, *args, **kwds)


numpy.savez = savez
"""


def _with_sitecustomize(tmp_path, source):
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(source)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {"PYTHONPATH": os.pathsep.join([str(folder), root, os.environ.get("PYTHONPATH", "")])}


def _printed_command(stderr) -> list[str]:
    """The command after "continue with: ", runnable: gpunet as ``python -m gpunet``,
    mpiexec as the one the tests use."""
    words = shlex.split(stderr.split("continue with: ", 1)[1].strip().splitlines()[0])
    at = words.index("gpunet")
    launcher = words[:at]
    if launcher:
        assert launcher[0] == "mpiexec"
        launcher[0] = MPIEXEC
    return [*launcher, sys.executable, "-m", "gpunet", *words[at + 1:]]


def _epochs(out) -> list[str]:
    return [row.split(",")[0] for row in (out / "metrics.csv").read_text().splitlines()[1:]]


# -- issue 25, item 1: --resume takes the run's own --epochs; the Ctrl-C hint works as printed --
def test_resume_with_the_printed_command_trains_the_runs_own_epochs(tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("train", *SMALL_RUN, "--epochs", "3", "--out", str(out),
                       env=_with_sitecustomize(tmp_path, INTERRUPT_AFTER_EPOCH_1))
    assert code == 130 and _epochs(out) == ["1"], err
    command = _printed_command(err)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "GPUNET_DEVICE": "cpu"})
    assert done.returncode == 0, done.stderr
    assert _epochs(out) == ["1", "2", "3"]  # it trained to epoch 5/5 before
    assert "epoch 3/3" in done.stderr
    header, _ = gpunet.io.read_checkpoint(str(out / "last.npz"))
    assert header["meta"]["flags"]["epochs"] == 3
    # more epochs may still be asked for, and are then saved
    code, _, err = cli("train", "--epochs", "4", "--resume", "--out", str(out))
    assert code == 0, err
    assert gpunet.io.read_checkpoint(str(out / "last.npz"))[0]["meta"]["flags"]["epochs"] == 4


def test_ctrl_c_during_validation_says_the_epochs_training_was_saved(tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("train", *SMALL_RUN, "--epochs", "3", "--out", str(out),
                       env=_with_sitecustomize(tmp_path, INTERRUPT_AT_VALIDATION_2))
    assert code == 130 and _epochs(out) == ["1"], err
    # it said "saved last.npz after epoch 1" of a file holding epoch 2's training
    assert f"interrupted; saved {out / 'last.npz'} with epoch 2's training, before its " \
        "validation" in err
    assert read_partial_epoch(out) == 2
    done = subprocess.run(_printed_command(err), capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "GPUNET_DEVICE": "cpu"})
    assert done.returncode == 0, done.stderr
    assert _epochs(out) == ["1", "2", "3"] and "epoch 1/3" not in done.stderr


def read_partial_epoch(out) -> int:
    return gpunet.io.read_checkpoint(str(out / "last.npz"))[0]["meta"]["history"]["partial"][
        "epoch"]


# -- issue 25, items 1 and 3: a distributed run's hint, and no resume with another process count --
@needs_mpiexec
def test_a_distributed_run_resumes_only_with_its_process_count(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "GPUNET_DEVICE": "cpu", "PYTHONWARNINGS": "ignore",
           **_with_sitecustomize(tmp_path, INTERRUPT_AFTER_EPOCH_1)}
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "gpunet", "train", *SMALL_RUN,
                           "--epochs", "3", "--distributed", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0 and _epochs(out) == ["1"], done.stderr
    assert f"continue with: mpiexec -n 2 gpunet train --resume --out {out} --distributed" \
        in done.stderr
    before = _snapshot(out)
    code, _, err = cli("train", "--resume", "--out", str(out))  # without mpiexec
    line = _one_error_line(err)
    assert code == 2 and "trained by 2 processes with a global batch of 64" in line
    assert "this run has 1 process, a global batch of 32" in line
    assert _snapshot(out) == before
    done = subprocess.run(_printed_command(done.stderr), capture_output=True, text=True,
                          timeout=300, env={**os.environ, "GPUNET_DEVICE": "cpu",
                                            "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    assert _epochs(out) == ["1", "2", "3"]
    meta = gpunet.io.read_checkpoint(str(out / "last.npz"))[0]["meta"]
    assert (meta["processes"], meta["global_batch"]) == (2, 64)


# -- issue 25, item 2: --overwrite removes the old run's files, its own only, once checked --
def test_overwrite_removes_every_file_of_the_old_run_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    assert cli("train", *SMALL_RUN, "--epochs", "1", "--out", str(out))[0] == 0
    (out / "notes.txt").write_text("mine")
    (out / ".tmp-0123456789abcdef.npz").write_bytes(b"left by a killed save")
    before = _snapshot(out)
    for refused in (["--lr", "-1"], ["--model", "alexnet_cifar", "--dataset", "mnist"],
                    ["--weight-decay", "nan"]):
        code, _, err = cli("train", *SMALL_RUN, "--epochs", "1", *refused, "--overwrite", "--out",
                           str(out))
        assert code == 2, err
        _one_error_line(err)
        assert _snapshot(out) == before, refused
    code, _, err = cli("train", *SMALL_RUN[:4], "--dev-size", "0", "--epochs", "1", "--overwrite",
                       "--out", str(out))
    assert code == 0, err
    assert sorted(os.listdir(out)) == sorted(
        ["last.npz", "metrics.csv", "notes.txt"] + ["curves.png"] * ("curves.png" in before))
    assert (out / "notes.txt").read_text() == "mine"


# -- issue 25, item 4: mpiexec without --distributed ---------------------------------------
@pytest.mark.parametrize("variable", ["PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"])
def test_several_mpi_processes_without_distributed_are_refused(tmp_path, variable):
    out = tmp_path / "run"
    code, _, err = cli("train", *SMALL_RUN, "--epochs", "1", "--out", str(out),
                       env={variable: "2"})
    line = _one_error_line(err)
    assert code == 2 and "one of 2 MPI processes" in line and "add --distributed" in line
    assert not out.exists()
    code, _, err = cli("bench", "--op", "step", "--out", str(out), env={variable: "2"})
    assert code == 2 and "start it without mpiexec" in _one_error_line(err)
    assert not out.exists()


@needs_mpiexec
def test_mpiexec_without_distributed_is_refused(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "gpunet", "train", *SMALL_RUN,
                           "--epochs", "1", "--out", str(out)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "GPUNET_DEVICE": "cpu"})
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and all("add --distributed" in line for line in lines), done.stderr
    assert not out.exists()


# -- issue 25, item 12: batch norm and a batch of one --------------------------------------
def test_batch_norm_with_a_single_training_example_says_so(tmp_path):
    out = tmp_path / "run"
    code, text, err = cli("train", "--dataset", "synthetic", "--limit", "1", "--dev-size", "0",
                          "--batch-norm", "--no-progress", "--epochs", "1", "--out", str(out))
    line = _one_error_line(err)  # was a ZeroDivisionError traceback
    assert code == 2 and "--limit 1: leaves 1 training image(s)" in line
    assert "--batch-norm needs at least 2" in line and "give --limit 2 or more" in line
    assert text == ""  # refused from the flags: no "training lenet5 on ..." line first
    assert not (out / "last.npz").exists()


def test_batch_norm_refusals_come_before_the_run_is_announced(tmp_path):
    code, text, err = cli("train", "--dataset", "synthetic", "--batch-norm", "--batch-size", "1",
                          "--limit", "100", "--no-progress", "--out", str(tmp_path / "a"))
    assert code == 2 and text == "", text  # it said "training lenet5 on ... (90 images" first
    assert "--batch-size 1: --batch-norm needs at least 2 examples per batch" \
        in _one_error_line(err)
    # a data root of one training image: known once read, still before the announcement
    data = tmp_path / "data"
    data.mkdir()
    for part, n in (("train", 1), ("t10k", 5)):
        (data / f"{part}-images-idx3-ubyte").write_bytes(idx_images(n))
        (data / f"{part}-labels-idx1-ubyte").write_bytes(idx_labels(n))
    code, text, err = cli("train", "--dataset", "mnist", "--data-root", str(data), "--batch-norm",
                          "--dev-size", "0", "--no-progress", "--out", str(tmp_path / "b"))
    assert code == 2 and text == "", text
    assert "--dataset mnist: 1 training image(s) left after --dev-size 0; --batch-norm needs " \
        "at least 2" in _one_error_line(err)
    # none at all, without batch norm: was an internal ZeroDivisionError in the dev split
    for part, n in (("train", 0), ("t10k", 5)):
        (data / f"{part}-images-idx3-ubyte").write_bytes(idx_images(n))
        (data / f"{part}-labels-idx1-ubyte").write_bytes(idx_labels(n))
    code, text, err = cli("train", "--dataset", "mnist", "--data-root", str(data),
                          "--dev-size", "0", "--no-progress", "--out", str(tmp_path / "c"))
    assert code == 2 and text == "", text
    assert "--dataset mnist: 0 training image(s) left after --dev-size 0; training needs one" \
        in _one_error_line(err)


# -- issue 25, item 15: a model that cannot take the dataset's images, before any data is read --
def test_a_model_input_mismatch_is_found_before_the_data_and_names_the_input(tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("train", "--model", "alexnet", "--dataset", "fashion-mnist",
                       "--data-root", str(tmp_path / "nowhere"), "--out", str(out))
    line = _one_error_line(err)
    assert code == 2 and "--model alexnet takes 3x224x224 images" in line
    assert "fashion-mnist has 1x28x28" in line and "models for them: lenet5" in line
    assert not (out / "last.npz").exists()
    assert cli("train", *SMALL_RUN, "--epochs", "1", "--out", str(out))[0] == 0
    code, _, err = cli("evaluate", str(out / "last.npz"), "--dataset", "mnist",
                       "--data-root", str(tmp_path / "nowhere"))
    line = _one_error_line(err)  # a 3-channel lenet5 on 1-channel images
    # it said "takes 1x32x32 images" (lenet5's textbook input) and listed models to train
    assert code == 2 and "holds a lenet5 trained on synthetic, which takes 3x32x32 images" \
        in line and "mnist has 1x28x28" in line
    assert line.endswith("; datasets of 3x32x32 images: cifar10, synthetic")


# -- issue 25, item 17: --dev-size as a fraction, and a default that fits small data -------
def test_dev_size_takes_a_fraction_and_its_default_fits_small_data(tmp_path):
    code, text, err = cli("train", "--dataset", "synthetic", "--limit", "300", "--epochs", "1",
                          "--no-progress", "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert "(270 images, 30 for validation)" in text
    code, text, err = cli("train", *SMALL_RUN[:4], "--dev-size", "0.2", "--epochs", "1",
                          "--no-progress", "--out", str(tmp_path / "b"))
    assert code == 0, err
    assert "(240 images, 60 for validation)" in text
    for value, message in (("0.7", "a fraction in (0, 0.5]"), ("1.5", "between 0 and 1"),
                           ("nan", "a finite number")):
        code, _, err = cli("train", *SMALL_RUN[:4], "--dev-size", value, "--out",
                           str(tmp_path / "c"))
        assert code == 2 and message in _one_error_line(err), value
    assert not (tmp_path / "c" / "last.npz").exists()


# -- issue 25, item 18: --no-progress keeps one line per epoch -----------------------------
def test_no_progress_keeps_one_line_per_epoch(tmp_path):
    code, _, err = cli("train", *SMALL_RUN, "--epochs", "2", "--out", str(tmp_path / "run"))
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"], err


# -- issue 25, item 20: a failed save names its target and the last good checkpoint --------
def test_a_full_disk_names_the_checkpoint_and_the_last_good_one(tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("train", *SMALL_RUN, "--epochs", "2", "--out", str(out),
                       env=_with_sitecustomize(tmp_path, DISK_FULL_AT_SAVE_4))
    line = _one_error_line("\n".join(line for line in err.splitlines()
                                     if not line.startswith("epoch ")))  # the epoch lines
    assert code == 2 and f"cannot save {out / 'last.npz'}: No space left on device" in line
    assert ".tmp-" not in line and f"the earlier {out / 'last.npz'} is unchanged" in line
    assert f"saved {out / 'last.npz'} after epoch 1" in line
    assert f"continue with: gpunet train --resume --out {out}" in line
    assert not [name for name in os.listdir(out) if name.startswith(".tmp-")]
    assert gpunet.io.read_checkpoint(str(out / "last.npz"))[0]["meta"]["epoch"] == 1


# -- issue 25, item 23: evaluate reads the test set alone, and takes a run's folder --------
def test_evaluate_reads_only_the_test_files_and_takes_a_runs_folder(tmp_path):
    full, test_only = tmp_path / "full", tmp_path / "test-only"
    for folder, parts in ((full, ("train", "t10k")), (test_only, ("t10k",))):
        folder.mkdir()
        for part in parts:
            n = 200 if part == "train" else 50
            (folder / f"{part}-images-idx3-ubyte").write_bytes(idx_images(n))
            (folder / f"{part}-labels-idx1-ubyte").write_bytes(idx_labels(n))
    out = tmp_path / "run"
    code, _, err = cli("train", "--dataset", "mnist", "--data-root", str(full), "--epochs", "1",
                       "--batch-size", "50", "--no-progress", "--out", str(out))
    assert code == 0, err
    (out / "last.npz").write_bytes(b"not a checkpoint")  # the folder's best.npz is taken
    code, text, err = cli("evaluate", str(out), "--data-root", str(test_only))
    assert code == 0, err
    assert text.startswith("loss ") and "(50 mnist test images)" in text
    code, _, err = cli("evaluate", str(tmp_path / "full"))
    assert code == 2 and "a folder without best.npz or last.npz" in _one_error_line(err)


# -- issue 25, item 24: nan and inf, --resume with --overwrite, a rising schedule --------
@pytest.mark.parametrize("flags,message", [
    (["--weight-decay", "inf"], "argument --weight-decay: expected a finite number, got 'inf'"),
    (["--schedule", "inverse-time", "--decay", "inf"], "argument --decay: expected a finite"),
    (["--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["--momentum", "nan"], "argument --momentum: expected a finite number"),
    (["--flip=-inf"], "argument --flip: expected a finite number"),
    (["--schedule", "inverse-sqrt", "--decay", "4"], "must be in (0, 1] (above 1 it raises"),
    (["--schedule", "inverse-time", "--decay", "-0.5"], "so it must be > 0, got -0.5"),
], ids=["weight-decay", "decay", "lr", "momentum", "flip", "inverse-sqrt", "inverse-time"])
def test_float_flags_refuse_nan_inf_and_a_rising_rate(tmp_path, flags, message):
    out = tmp_path / "run"
    code, _, err = cli("train", "--dataset", "fashion-mnist", "--data-root",
                       str(tmp_path / "nowhere"), *flags, "--out", str(out))
    assert code == 2 and message in _one_error_line(err)  # before the data is looked for
    assert not out.exists()


def test_gradcheck_eps_refuses_nan():
    code, _, err = cli("gradcheck", "lenet5", "--eps", "nan")
    assert code == 2 and "argument --eps: expected a finite number" in _one_error_line(err)


def test_resume_and_overwrite_together_are_refused(tmp_path):
    out = tmp_path / "run"
    assert cli("train", *SMALL_RUN, "--epochs", "1", "--out", str(out))[0] == 0
    before = _snapshot(out)
    code, _, err = cli("train", "--epochs", "2", "--resume", "--overwrite", "--out", str(out))
    assert code == 2 and "give one of them" in _one_error_line(err)
    assert _snapshot(out) == before


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
