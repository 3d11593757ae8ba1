"""fit / evaluate / History / callbacks / checkpoints."""
import math
import os
import zipfile

import numpy
import pytest

import gpunet
from gpunet import losses, nn, optim
from gpunet.data import synthetic_images
from gpunet.data.transforms import to_float
from gpunet.train import EarlyStopping, ModelCheckpoint

from .helpers import HAS_MATPLOTLIB, tiny_data, tiny_model


@pytest.fixture(scope="module")
def small_data():
    (x, y), (xt, yt) = synthetic_images(600, 200, shape=(1, 12, 12), classes=4, seed=1)
    return (to_float(x), y), (to_float(xt), yt)


def small_net(dropout=0.0):
    layers = [nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(100, 16),
              nn.ReLU()]
    layers += [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(*layers, nn.Linear(16, 4))


def test_fit_learns_and_records_history(small_data, tmp_path):
    gpunet.manual_seed(0)
    model = small_net()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = optim.schedules.InverseTimeDecay(opt, 0.5)
    before = gpunet.evaluate(model, small_data[1])
    history = gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, small_data[0], 4, 32,
                         val_data=small_data[1], schedule=sched, progress=False)
    after = gpunet.evaluate(model, small_data[1])
    assert after["accuracy"] > max(0.9, before["accuracy"] + 0.3)
    assert history["epoch"] == [1, 2, 3, 4]
    assert history["lr"] == pytest.approx([0.05, 0.05 / 1.5, 0.05 / 2, 0.05 / 2.5])
    assert history["loss"][-1] < history["loss"][0]
    assert history.rows[-1]["val_accuracy"] == pytest.approx(after["accuracy"])
    history.to_csv(tmp_path / "m.csv")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == "epoch,loss,accuracy,val_loss,val_accuracy,lr,time" and len(lines) == 5
    if HAS_MATPLOTLIB:
        history.plot(tmp_path / "curves.png")
        assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        with pytest.raises(ImportError, match="pip install matplotlib"):
            history.plot(tmp_path / "curves.png")


def test_evaluate_restores_the_mode(small_data):
    model = small_net(dropout=0.5)
    gpunet.evaluate(model, small_data[1])
    assert model.training
    model.eval()
    gpunet.evaluate(model, small_data[1])
    assert not model.training


def test_fit_rejects_uint8_and_mismatched_data(small_data):
    model = small_net()
    opt = optim.SGD(model.parameters(), 0.1)
    x, y = small_data[0]
    with pytest.raises(TypeError, match="to_float"):
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, ((x * 255).astype("u1"), y), 1, 8)
    with pytest.raises(ValueError, match="600 examples but y has 599"):
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, (x, y[:-1]), 1, 8)


def test_fit_stops_on_non_finite_loss(small_data):
    model = small_net()
    for p in model.parameters():
        p.data *= 1e20  # three layers of 1e20 overflow float32 (max 3.4e38)
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(gpunet.NonFiniteError, match="epoch 1, step 1"), \
            numpy.errstate(over="ignore", invalid="ignore"):
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, small_data[0], 3, 32,
                   progress=False)


def test_early_stopping_and_best_checkpoint(small_data, tmp_path):
    gpunet.manual_seed(0)
    model = small_net()
    opt = optim.SGD(model.parameters(), lr=0.0)  # nothing improves
    best = tmp_path / "best.npz"
    history = gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, small_data[0], 10, 64,
                         val_data=small_data[1], progress=False,
                         callbacks=[EarlyStopping("val_loss", patience=2),
                                    ModelCheckpoint(best, "val_accuracy")])
    assert len(history) == 3
    meta = gpunet.load(best, small_net())
    assert meta["epoch"] == 1


def _train(epochs, data, save_at=None, path=None, resume_from=None):
    """A run with dropout and shuffling; optionally saved after ``save_at`` epochs or
    resumed from ``resume_from``."""
    gpunet.manual_seed(7)
    model = small_net(dropout=0.3)
    opt = optim.Adam(model.parameters(), 3e-3)
    sched = optim.schedules.ExponentialDecay(opt, 0.9)
    history, start = None, 0
    if resume_from is not None:
        gpunet.manual_seed(12345)  # a different seed: the checkpoint must restore it
        model, opt = small_net(dropout=0.3), None
        opt = optim.Adam(model.parameters(), 3e-3)
        sched = optim.schedules.ExponentialDecay(opt, 0.9)
        meta = gpunet.load(resume_from, model, opt)
        sched.load_state_dict(meta["schedule"])
        history, start = gpunet.History.from_dict(meta["history"]), meta["epoch"]
    history = gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, data, epochs, 50,
                         schedule=sched, progress=False, history=history, initial_epoch=start,
                         callbacks=[_SaveAt(save_at, path)] if save_at else ())
    return model, opt, history


class _SaveAt(gpunet.train.Callback):
    def __init__(self, epoch, path):
        self.epoch, self.path = epoch, path

    def on_epoch_end(self, run):
        if run.epoch == self.epoch:
            run.save(self.path)
        return False


def test_resumed_run_equals_uninterrupted_bit_for_bit(small_data, tmp_path):
    path = tmp_path / "ck.npz"
    full_model, full_opt, full_hist = _train(4, small_data[0], save_at=2, path=path)
    model, opt, hist = _train(4, small_data[0], resume_from=path)
    for (name, a), b in zip(full_model.state_dict().items(), model.state_dict().values()):
        assert numpy.array_equal(a, b), name
    for sa, sb in zip(full_opt.state_dict()["state"], opt.state_dict()["state"]):
        for key in sa:
            assert numpy.array_equal(sa[key], sb[key])
    assert hist["loss"] == full_hist["loss"] and hist["lr"] == full_hist["lr"]


# -- checkpoint files ------------------------------------------------------------------------
def test_save_is_atomic_and_load_restores(tmp_path):
    model = small_net()
    opt = optim.Momentum(model.parameters(), 0.1)
    for p in model.parameters():
        p.grad += 1
    opt.step()
    path = tmp_path / "ck.npz"
    gpunet.save(path, model, opt, epoch=3, note="first")
    gpunet.save(path, model, opt, epoch=4, note="second")
    assert os.listdir(tmp_path) == ["ck.npz"]
    other = small_net()
    other_opt = optim.Momentum(other.parameters(), 0.5)
    meta = gpunet.load(path, other, other_opt)
    assert meta == {"epoch": 4, "note": "second"}
    assert other_opt.lr == 0.1 and other_opt.steps == 1
    for a, b in zip(model.parameters(), other.parameters()):
        assert numpy.array_equal(a.data, b.data)


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    model = small_net()
    path = tmp_path / "ck.npz"
    gpunet.save(path, model, optim.SGD(model.parameters(), 0.1))
    raw = bytearray(path.read_bytes())
    # flip one byte inside the first stored array's data
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("model/0.weight.npy")
    raw[info.header_offset + 30 + len(info.filename) + 140] ^= 0xFF
    (tmp_path / "flipped.npz").write_bytes(bytes(raw))
    with pytest.raises(gpunet.CheckpointError, match="CRC-32 for file 'model/0.weight"):
        gpunet.load(tmp_path / "flipped.npz", small_net())
    # a well-formed zip whose array was changed after saving: our SHA-256 catches it
    with numpy.load(path) as archive:
        members = {name: archive[name] for name in archive.files}
    members["model/0.weight"] = members["model/0.weight"] + 1
    numpy.savez(tmp_path / "altered.npz", **members)
    with pytest.raises(gpunet.CheckpointError, match="altered.npz: checksum mismatch"):
        gpunet.load(tmp_path / "altered.npz", small_net())
    (tmp_path / "short.npz").write_bytes(path.read_bytes()[:300])
    with pytest.raises(gpunet.CheckpointError, match="short.npz"):
        gpunet.load(tmp_path / "short.npz", small_net())
    numpy.savez(tmp_path / "objects.npz", __meta__=numpy.array([{"a": 1}], dtype=object))
    with pytest.raises(gpunet.CheckpointError, match="objects.npz"):
        gpunet.load(tmp_path / "objects.npz", small_net())
    with pytest.raises(gpunet.CheckpointError, match="unexpected keys.*expected shape"):
        gpunet.load(path, nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(gpunet.CheckpointError, match="optimizer is SGD"):
        gpunet.load(path, small_net(), optim.Adam(small_net().parameters()))
    with pytest.raises(gpunet.CheckpointError, match="no such checkpoint"):
        gpunet.load(tmp_path / "absent.npz", small_net())


def test_no_pickle_in_checkpoints(tmp_path):
    path = tmp_path / "ck.npz"
    gpunet.save(path, small_net(), history={"rows": [{"loss": math.nan}]})
    with numpy.load(path, allow_pickle=False) as archive:
        assert all(archive[name].dtype != object for name in archive.files)


def test_monitors_are_checked_when_made_and_before_the_first_step(rng, tmp_path):
    with pytest.raises(ValueError, match="monitor must be one of"):
        ModelCheckpoint(tmp_path / "best.npz", monitor="val_acc")
    model = tiny_model()
    opt = optim.SGD(model.parameters(), 0.1)
    for callback in (ModelCheckpoint(tmp_path / "best.npz"), EarlyStopping()):
        with pytest.raises(ValueError, match="needs fit.*val_data"):
            gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, tiny_data(8, rng), 1, 4,
                       callbacks=[callback], progress=False)
    assert opt.steps == 0  # refused before any step
    # saving every epoch needs no validation data
    gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, tiny_data(8, rng), 1, 4, progress=False,
               callbacks=[ModelCheckpoint(tmp_path / "every.npz", save_best_only=False)])
    assert (tmp_path / "every.npz").exists()


def test_early_stopping_says_why_it_stops_on_nan(rng):
    class NanVal(gpunet.train.Callback):
        def on_epoch_end(self, run):
            run.history.rows[-1]["val_loss"] = math.nan

    model = tiny_model()
    with pytest.warns(RuntimeWarning, match="val_loss is NaN after epoch 1; stopping"):
        history = gpunet.fit(model, losses.SoftmaxCrossEntropy(),
                             optim.SGD(model.parameters(), 0.1), tiny_data(8, rng), 5, 4,
                             val_data=tiny_data(4, rng), callbacks=[NanVal(), EarlyStopping()],
                             progress=False)
    assert len(history.rows) == 1


def test_accuracy_counts_one_hot_targets(rng):
    model = tiny_model()
    x, y = tiny_data(12, rng)
    one_hot = numpy.eye(3, dtype="float32")[y]
    by_label = gpunet.evaluate(model, (x, y))["accuracy"]
    assert by_label > 0 and gpunet.evaluate(model, (x, one_hot))["accuracy"] == by_label
    history = gpunet.fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), 0),
                         (x, one_hot), 1, 12, progress=False, shuffle=False)
    assert history["accuracy"] == [by_label]


def test_a_last_batch_of_one_is_dropped_for_batch_norm(rng):
    model = tiny_model(batch_norm=True)
    opt = optim.SGD(model.parameters(), 0.1)
    history = gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, tiny_data(9, rng), 1, 4,
                         progress=False)  # 9 = 4 + 4 + 1
    assert len(history.steps) == 2 and opt.steps == 2
    with pytest.raises(ValueError, match="more than one value per channel"):
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, tiny_data(9, rng), 1, 4,
                   progress=False, drop_last=False)
    plain = tiny_model()
    history = gpunet.fit(plain, losses.SoftmaxCrossEntropy(), optim.SGD(plain.parameters(), 0.1),
                         tiny_data(9, rng), 1, 4, progress=False)
    assert len(history.steps) == 3  # nothing dropped without batch norm


def test_fit_checks_its_arguments_before_the_first_step(rng):
    model = tiny_model()
    opt = optim.SGD(model.parameters(), 0.1)
    loss = losses.SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got 0"):
        gpunet.fit(model, loss, opt, tiny_data(8, rng), 1, 0, progress=False)
    with pytest.raises(TypeError, match="x must be a NumPy or CuPy array, got list"):
        gpunet.fit(model, loss, opt, ([[0.0] * 4] * 8, list(range(8))), 1, 4, progress=False)
    wrong_val = (rng.standard_normal((4, 1, 3, 3)).astype("float32"), rng.integers(0, 3, 4))
    with pytest.raises(ValueError, match="val_data: the model cannot take these examples"):
        gpunet.fit(model, loss, opt, tiny_data(8, rng), 1, 4, val_data=wrong_val, progress=False)
    assert opt.steps == 0


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


def test_fit_refuses_an_unknown_progress():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = numpy.zeros((4, 1, 2, 2), "float32"), numpy.zeros(4, "int64")
    with pytest.raises(ValueError, match="progress: expected True"):
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), 0.1),
                   (x, y), 1, 2, progress="bar")


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
