"""What a new user met in a second trial (issue 25): each item pinned. CLI cases run
``python -m gpunet`` in a fresh process and check the exit status, the one-line
message and that earlier files are untouched."""
import errno
import os
import shlex
import subprocess
import sys

import numpy
import pytest

import gpunet
from gpunet import losses, nn, optim

from .test_distributed import MPIEXEC, needs_mpiexec
from .test_user_trial import _idx_images, _idx_labels, _one_error_line, _snapshot, cli

QUICK = ["--dataset", "synthetic", "--limit", "300", "--dev-size", "60", "--batch-size", "32",
         "--no-progress", "--seed", "1"]

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


# -- 1: --resume takes the run's own --epochs; the Ctrl-C hint works as printed ------------
def test_resume_with_the_printed_command_trains_the_runs_own_epochs(tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("train", *QUICK, "--epochs", "3", "--out", str(out),
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


# -- 1 and 3: a distributed run's hint, and no resume with another process count ----------
@needs_mpiexec
def test_a_distributed_run_resumes_only_with_its_process_count(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "GPUNET_DEVICE": "cpu", "PYTHONWARNINGS": "ignore",
           **_with_sitecustomize(tmp_path, INTERRUPT_AFTER_EPOCH_1)}
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "gpunet", "train", *QUICK,
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


# -- 2: --overwrite removes the old run's files, its own only, and only once checked -------
def test_overwrite_removes_every_file_of_the_old_run_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    assert cli("train", *QUICK, "--epochs", "1", "--out", str(out))[0] == 0
    (out / "notes.txt").write_text("mine")
    (out / ".tmp-0123456789abcdef.npz").write_bytes(b"left by a killed save")
    before = _snapshot(out)
    for refused in (["--lr", "-1"], ["--model", "alexnet_cifar", "--dataset", "mnist"],
                    ["--weight-decay", "nan"]):
        code, _, err = cli("train", *QUICK, "--epochs", "1", *refused, "--overwrite", "--out",
                           str(out))
        assert code == 2, err
        _one_error_line(err)
        assert _snapshot(out) == before, refused
    code, _, err = cli("train", *QUICK[:4], "--dev-size", "0", "--epochs", "1", "--overwrite",
                       "--out", str(out))
    assert code == 0, err
    assert sorted(os.listdir(out)) == sorted(
        ["last.npz", "metrics.csv", "notes.txt"] + ["curves.png"] * ("curves.png" in before))
    assert (out / "notes.txt").read_text() == "mine"


# -- 4: mpiexec without --distributed --------------------------------------------------------
@pytest.mark.parametrize("variable", ["PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"])
def test_several_mpi_processes_without_distributed_are_refused(tmp_path, variable):
    out = tmp_path / "run"
    code, _, err = cli("train", *QUICK, "--epochs", "1", "--out", str(out),
                       env={variable: "2"})
    line = _one_error_line(err)
    assert code == 2 and "one of 2 MPI processes" in line and "add --distributed" in line
    assert not out.exists()
    code, _, err = cli("bench", "--op", "step", "--out", str(out), env={variable: "2"})
    assert code == 2 and "start it without mpiexec" in _one_error_line(err)
    assert not out.exists()


def test_launched_processes_reads_the_launchers_variables(monkeypatch):
    from gpunet.distributed import launched_processes
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE",
                 "MPI_LOCALNRANKS"):
        monkeypatch.delenv(name, raising=False)
    assert launched_processes() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert launched_processes() == 4


@needs_mpiexec
def test_mpiexec_without_distributed_is_refused(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "gpunet", "train", *QUICK,
                           "--epochs", "1", "--out", str(out)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "GPUNET_DEVICE": "cpu"})
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and all("add --distributed" in line for line in lines), done.stderr
    assert not out.exists()


# -- 12: batch norm and a batch of one ---------------------------------------------------
def test_batch_norm_with_a_single_training_example_says_so(tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("train", "--dataset", "synthetic", "--limit", "1", "--dev-size", "0",
                       "--batch-norm", "--no-progress", "--epochs", "1", "--out", str(out))
    line = _one_error_line(err)  # was a ZeroDivisionError traceback
    assert code == 2 and "1 example(s) make no training batch" in line and "batch norm" in line
    assert not (out / "last.npz").exists()


def _bn_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 5, bias=False), nn.BatchNorm1d(5),
                         nn.ReLU(), nn.Linear(5, 3))


@pytest.mark.parametrize("n,batch_size,match", [
    (1, 4, "1 example\\(s\\) make no training batch of at least 2 rows"),
    (8, 1, "batch_size 1: batch norm needs at least 2"),
])
def test_fit_refuses_batch_norm_batches_of_one_before_any_step(n, batch_size, match):
    rng = numpy.random.default_rng(0)
    model = _bn_model()
    opt = optim.SGD(model.parameters(), 0.1)
    x, y = rng.standard_normal((n, 1, 2, 2)).astype("float32"), rng.integers(0, 3, n)
    with pytest.raises(ValueError, match=match):
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, (x, y), 1, batch_size,
                   progress=False)
    assert opt.steps == 0


def test_fit_with_drop_last_and_too_few_examples_says_so():
    rng = numpy.random.default_rng(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = rng.standard_normal((3, 1, 2, 2)).astype("float32"), rng.integers(0, 3, 3)
    with pytest.raises(ValueError, match="3 example\\(s\\) make no training batch of 4 rows"):
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), 0.1),
                   (x, y), 1, 4, progress=False, drop_last=True)


# -- 15: a model that cannot take the dataset's images, before any data is read -----------
def test_a_model_input_mismatch_is_found_before_the_data_and_names_the_input(tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("train", "--model", "alexnet", "--dataset", "fashion-mnist",
                       "--data-root", str(tmp_path / "nowhere"), "--out", str(out))
    line = _one_error_line(err)
    assert code == 2 and "--model alexnet takes 3x224x224 images" in line
    assert "fashion-mnist has 1x28x28" in line and "models for them: lenet5" in line
    assert not (out / "last.npz").exists()
    assert cli("train", *QUICK, "--epochs", "1", "--out", str(out))[0] == 0
    code, _, err = cli("evaluate", str(out / "last.npz"), "--dataset", "mnist",
                       "--data-root", str(tmp_path / "nowhere"))
    line = _one_error_line(err)  # a 3-channel lenet5 on 1-channel images
    assert code == 2 and "holds a lenet5, which takes" in line and "mnist has 1x28x28" in line


# -- 17: --dev-size as a fraction, and a default that fits small data ---------------------
def test_dev_size_takes_a_fraction_and_its_default_fits_small_data(tmp_path):
    code, text, err = cli("train", "--dataset", "synthetic", "--limit", "300", "--epochs", "1",
                          "--no-progress", "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert "(270 images, 30 for validation)" in text
    code, text, err = cli("train", *QUICK[:4], "--dev-size", "0.2", "--epochs", "1",
                          "--no-progress", "--out", str(tmp_path / "b"))
    assert code == 0, err
    assert "(240 images, 60 for validation)" in text
    for value, message in (("0.7", "a fraction in (0, 0.5]"), ("1.5", "between 0 and 1"),
                           ("nan", "a finite number")):
        code, _, err = cli("train", *QUICK[:4], "--dev-size", value, "--out",
                           str(tmp_path / "c"))
        assert code == 2 and message in _one_error_line(err), value
    assert not (tmp_path / "c" / "last.npz").exists()


# -- 18: --no-progress keeps one line per epoch ------------------------------------------
def test_no_progress_keeps_one_line_per_epoch(tmp_path):
    code, _, err = cli("train", *QUICK, "--epochs", "2", "--out", str(tmp_path / "run"))
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"], err


def test_fit_refuses_an_unknown_progress():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = numpy.zeros((4, 1, 2, 2), "float32"), numpy.zeros(4, "int64")
    with pytest.raises(ValueError, match="progress: expected True"):
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), 0.1),
                   (x, y), 1, 2, progress="bar")


# -- 20: a failed save names its target and the last good checkpoint ---------------------
def test_a_full_disk_names_the_checkpoint_and_the_last_good_one(tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("train", *QUICK, "--epochs", "2", "--out", str(out),
                       env=_with_sitecustomize(tmp_path, DISK_FULL_AT_SAVE_4))
    line = _one_error_line("\n".join(line for line in err.splitlines()
                                     if not line.startswith("epoch ")))  # the epoch lines
    assert code == 2 and f"cannot save {out / 'last.npz'}: No space left on device" in line
    assert ".tmp-" not in line and f"the earlier {out / 'last.npz'} is unchanged" in line
    assert f"saved {out / 'last.npz'} after epoch 1" in line
    assert f"continue with: gpunet train --resume --out {out}" in line
    assert not [name for name in os.listdir(out) if name.startswith(".tmp-")]
    assert gpunet.io.read_checkpoint(str(out / "last.npz"))[0]["meta"]["epoch"] == 1


def test_save_errors_name_the_target_not_the_temporary_file(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(2, 2))
    path = tmp_path / "model.npz"

    def full(file, *args, **kwds):
        raise OSError(errno.ENOSPC, "No space left on device", file.name)

    monkeypatch.setattr(numpy, "savez", full)
    with pytest.raises(OSError, match=f"cannot save {path}: No space left on device; "
                                      f"nothing was written to {path}") as caught:
        gpunet.save(path, model)
    assert caught.value.errno == errno.ENOSPC and ".tmp-" not in str(caught.value)
    assert os.listdir(tmp_path) == []


# -- 23: evaluate reads the test set alone, and takes a run's folder ----------------------
def test_evaluate_reads_only_the_test_files_and_takes_a_runs_folder(tmp_path):
    full, test_only = tmp_path / "full", tmp_path / "test-only"
    for folder, parts in ((full, ("train", "t10k")), (test_only, ("t10k",))):
        folder.mkdir()
        for part in parts:
            n = 200 if part == "train" else 50
            (folder / f"{part}-images-idx3-ubyte").write_bytes(_idx_images(n))
            (folder / f"{part}-labels-idx1-ubyte").write_bytes(_idx_labels(n))
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


# -- 24: nan and inf, --resume with --overwrite, a schedule that would raise the rate ------
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
    assert cli("train", *QUICK, "--epochs", "1", "--out", str(out))[0] == 0
    before = _snapshot(out)
    code, _, err = cli("train", "--epochs", "2", "--resume", "--overwrite", "--out", str(out))
    assert code == 2 and "give one of them" in _one_error_line(err)
    assert _snapshot(out) == before
