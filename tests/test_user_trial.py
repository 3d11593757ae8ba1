"""What a new user met in a trial (issue 15): silent wrong results, lost work and
late failures, each pinned here. CLI cases run ``python -m gpunet`` in a fresh
process and check the exit status, the one-line message and that earlier files
are untouched."""
import gzip
import io
import math
import os
import stat
import warnings

import numpy
import pytest

import gpunet
from gpunet import losses, nn, optim
from gpunet.data import DatasetError, load_fashion_mnist
from gpunet.io import CheckpointError
from gpunet.train import EarlyStopping, ModelCheckpoint

from .helpers import assert_close


def _idx_images(n):
    header = numpy.array([0x00000803, n, 28, 28], dtype=">i4").tobytes()
    return header + bytes(n * 28 * 28)


def _idx_labels(n):
    return numpy.array([0x00000801, n], dtype=">i4").tobytes() + bytes(n)


def test_an_explicit_data_root_without_the_files_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="does not hold"):
        load_fashion_mnist(tmp_path / "no-such-dir")
    for name, data in (("train-images-idx3-ubyte", _idx_images(3)),
                       ("train-labels-idx1-ubyte", _idx_labels(3)),
                       ("t10k-images-idx3-ubyte", _idx_images(2))):  # 3 of the 4 files
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
    with pytest.raises(DatasetError, match=r"does not hold t10k-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_labels(2))
    # all four: these are read (and fail their checksums), not another copy found elsewhere
    with pytest.raises(DatasetError, match=f"{tmp_path}.*checksum mismatch"):
        load_fashion_mnist(tmp_path)


def test_other_loaders_with_an_explicit_root_do_not_fall_back(tmp_path):
    from gpunet.data import load_cifar10, load_mnist
    with pytest.raises(DatasetError, match="does not hold"):
        load_mnist(tmp_path)
    with pytest.raises(DatasetError, match=f"looked in {tmp_path}"):
        load_cifar10(tmp_path)


def _tiny_model(batch_norm=False):
    layers = [nn.Flatten(), nn.Linear(4, 3)] + ([nn.BatchNorm1d(3)] if batch_norm else [])
    return nn.Sequential(*layers)


def _data(n, rng, classes=3):
    return rng.standard_normal((n, 1, 2, 2)).astype("float32"), rng.integers(0, classes, n)


def test_monitors_are_checked_when_made_and_before_the_first_step(rng, tmp_path):
    with pytest.raises(ValueError, match="monitor must be one of"):
        ModelCheckpoint(tmp_path / "best.npz", monitor="val_acc")
    model = _tiny_model()
    opt = optim.SGD(model.parameters(), 0.1)
    for callback in (ModelCheckpoint(tmp_path / "best.npz"), EarlyStopping()):
        with pytest.raises(ValueError, match="needs fit.*val_data"):
            gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, _data(8, rng), 1, 4,
                       callbacks=[callback], progress=False)
    assert opt.steps == 0  # refused before any step
    # saving every epoch needs no validation data
    gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, _data(8, rng), 1, 4, progress=False,
               callbacks=[ModelCheckpoint(tmp_path / "every.npz", save_best_only=False)])
    assert (tmp_path / "every.npz").exists()


def test_early_stopping_says_why_it_stops_on_nan(rng):
    class NanVal(gpunet.train.Callback):
        def on_epoch_end(self, run):
            run.history.rows[-1]["val_loss"] = math.nan

    model = _tiny_model()
    with pytest.warns(RuntimeWarning, match="val_loss is NaN after epoch 1; stopping"):
        history = gpunet.fit(model, losses.SoftmaxCrossEntropy(),
                             optim.SGD(model.parameters(), 0.1), _data(8, rng), 5, 4,
                             val_data=_data(4, rng), callbacks=[NanVal(), EarlyStopping()],
                             progress=False)
    assert len(history.rows) == 1


def test_accuracy_counts_one_hot_targets(rng):
    model = _tiny_model()
    x, y = _data(12, rng)
    one_hot = numpy.eye(3, dtype="float32")[y]
    by_label = gpunet.evaluate(model, (x, y))["accuracy"]
    assert by_label > 0 and gpunet.evaluate(model, (x, one_hot))["accuracy"] == by_label
    history = gpunet.fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), 0),
                         (x, one_hot), 1, 12, progress=False, shuffle=False)
    assert history["accuracy"] == [by_label]


def test_load_state_dict_converts_and_checks_everything_before_writing(rng):
    torch = pytest.importorskip("torch")
    model = _tiny_model()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = {k: numpy.full_like(v, 7.0) for k, v in before.items()}
    last = sorted(state)[-1]

    class Unconvertible:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("this value cannot become an array")

    state[last] = Unconvertible()
    with pytest.raises(ValueError, match=f"{last}: cannot convert"):
        model.load_state_dict(state)
    for key, value in model.state_dict().items():
        assert numpy.array_equal(value, before[key]), f"{key} was changed"
    # PyTorch tensors that require grad load (detached)
    tensors = {k: torch.tensor(v + 1.0, requires_grad=True) for k, v in before.items()}
    model.load_state_dict(tensors)
    assert_close(model.state_dict()["1.weight"], before["1.weight"] + 1, 0, 0)


def test_a_pytorch_state_dict_without_num_batches_tracked_loads():
    model = nn.Sequential(nn.BatchNorm1d(3))
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    model.load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys"):
        model.load_state_dict({})


def test_gradcheck_passes_a_correct_model_with_tiny_gradients(capsys):
    from gpunet.cli import main
    assert main(["gradcheck", "alexnet_cifar", "--seed", "3"]) == 0  # was "suspicious"
    assert "great" in capsys.readouterr().out


def test_a_last_batch_of_one_is_dropped_for_batch_norm(rng):
    model = _tiny_model(batch_norm=True)
    opt = optim.SGD(model.parameters(), 0.1)
    history = gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, _data(9, rng), 1, 4,
                         progress=False)  # 9 = 4 + 4 + 1
    assert len(history.steps) == 2 and opt.steps == 2
    with pytest.raises(ValueError, match="more than one value per channel"):
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, _data(9, rng), 1, 4,
                   progress=False, drop_last=False)
    plain = _tiny_model()
    history = gpunet.fit(plain, losses.SoftmaxCrossEntropy(), optim.SGD(plain.parameters(), 0.1),
                         _data(9, rng), 1, 4, progress=False)
    assert len(history.steps) == 3  # nothing dropped without batch norm


def test_fit_checks_its_arguments_before_the_first_step(rng):
    model = _tiny_model()
    opt = optim.SGD(model.parameters(), 0.1)
    loss = losses.SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got 0"):
        gpunet.fit(model, loss, opt, _data(8, rng), 1, 0, progress=False)
    with pytest.raises(TypeError, match="x must be a NumPy or CuPy array, got list"):
        gpunet.fit(model, loss, opt, ([[0.0] * 4] * 8, list(range(8))), 1, 4, progress=False)
    wrong_val = (rng.standard_normal((4, 1, 3, 3)).astype("float32"), rng.integers(0, 3, 4))
    with pytest.raises(ValueError, match="val_data: the model cannot take these examples"):
        gpunet.fit(model, loss, opt, _data(8, rng), 1, 4, val_data=wrong_val, progress=False)
    assert opt.steps == 0


def test_pytorch_files_are_named_as_such(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(2, 3).state_dict(), path)
    with pytest.raises(CheckpointError, match="a PyTorch file .torch.save."):
        gpunet.load(path, _tiny_model())
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer, _use_new_zipfile_serialization=False)
    (tmp_path / "legacy.pt").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="a PyTorch file"):
        gpunet.load(tmp_path / "legacy.pt", _tiny_model())


def test_checkpoints_get_the_umasks_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = gpunet.save(tmp_path / "ckpt.npz", _tiny_model())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_layers_name_what_they_cannot_take():
    torch = pytest.importorskip("torch")
    layer = nn.Linear(3, 2)
    with pytest.raises(TypeError, match=r"must be an array .NumPy or CuPy., got torch.Tensor "
                                        r".a PyTorch tensor: pass t.numpy\(\)."):
        layer(torch.zeros(2, 3))
    with pytest.raises(TypeError, match=r"input is big-endian float32 \(>f4\)"):
        layer(numpy.zeros((2, 3), dtype=">f4"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(numpy.zeros((2, 3), dtype="float32"))


# -- the command line ---------------------------------------------------------------------
QUICK = ["--dataset", "synthetic", "--limit", "300", "--dev-size", "60", "--batch-size", "32",
         "--no-progress", "--seed", "1", "--epochs", "1"]


def cli(*args, env=None):
    from .test_cli import run_cli
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
    assert cli("train", *QUICK, "--out", str(out))[0] == 0
    before = _snapshot(out)
    code, _, err = cli("train", *QUICK, "--out", str(out))
    line = _one_error_line(err)
    assert code == 2 and "holds an earlier run" in line and "--resume" in line \
        and "--overwrite" in line
    assert _snapshot(out) == before
    assert cli("train", *QUICK, "--out", str(out), "--overwrite")[0] == 0


def test_cli_resume_continues_the_run_or_names_the_flags_it_would_change(tmp_path):
    out = tmp_path / "run"
    assert cli("train", *QUICK, "--lr", "0.01", "--out", str(out))[0] == 0
    before = _snapshot(out)
    code, _, err = cli("train", *QUICK[:-2], "--epochs", "2", "--lr", "0.1", "--batch-size",
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
    assert cli("train", *QUICK, "--out", str(out))[0] == 0
    code, _, err = cli("train", *QUICK, "--resume", "--out", str(out))  # --epochs 1 again
    assert code == 2 and "has done 1 epoch(s) already" in _one_error_line(err)
    code, _, err = cli("train", *QUICK, "--model", "alexnet_cifar", "--resume", "--out",
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
    code, _, err = cli("train", *QUICK[:-2], "--epochs", "3", "--schedule", "step", "--decay",
                       "0.5", "--step-size", "2", "--lr", "0.01", "--out", str(out))
    assert code == 0, err
    rates = [float(r.split(",")[5]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert rates == pytest.approx([0.01, 0.01, 0.005])  # it used to stay at --decay 1.0


def test_cli_out_must_be_a_folder_it_can_write_in(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    code, _, err = cli("train", *QUICK, "--out", str(a_file))
    assert code == 2 and "is a file" in _one_error_line(err)
    assert a_file.read_text() == "keep me"
    code, _, err = cli("train", *QUICK, "--out", "/proc/gpunet-cannot-write-here")
    assert code == 2 and "--out: cannot write in /proc/gpunet-cannot-write-here" \
        in _one_error_line(err)


def test_cli_follows_gpunet_device(tmp_path):
    code, _, err = cli("train", *QUICK, "--out", str(tmp_path / "a"))
    assert code == 0 and "warning" not in err  # GPUNET_DEVICE=cpu: no CUDA probe, no warning
    code, _, err = cli("train", *QUICK, "--out", str(tmp_path / "b"),
                       env={"GPUNET_DEVICE": "bogus"})
    assert code == 2 and "GPUNET_DEVICE: expected 'cpu'" in _one_error_line(err)


def test_cli_batch_norm_with_a_last_batch_of_one(tmp_path):
    # 300 - 59 = 241 = 6 * 40 + 1
    code, _, err = cli("train", *QUICK[:-4], "--dev-size", "59", "--batch-size", "40",
                       "--batch-norm", "--out", str(tmp_path / "run"))
    assert code == 0, err


def test_cli_ctrl_c_says_what_was_saved(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gpunet", "train", *QUICK[:-2], "--epochs",
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
