"""Exact resume across processes, non-finite diagnostics, determinism."""
import os
import subprocess
import sys

import numpy
import pytest

import gpunet
from gpunet import losses, nn, optim
from gpunet.train import Callback, ModelCheckpoint

RUNNER = r"""
import sys, numpy, gpunet
from gpunet import nn, optim, losses
from gpunet.train import Callback, History

out, stop, resume, device = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
gpunet.set_device(device)
gpunet.manual_seed(5 if resume == "-" else 999)  # a resumed run must not depend on this
rng = numpy.random.default_rng(0)
x = rng.standard_normal((60, 1, 6, 6)).astype("float32")
y = rng.integers(0, 3, 60)
gpunet.manual_seed(5) if resume == "-" else None
model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3),
                      nn.Linear(48, 3))
opt = optim.Adam(model.parameters(), 1e-2)
sched = optim.schedules.ExponentialDecay(opt, 0.5)
history, start = None, 0
if resume != "-":
    meta = gpunet.load(resume, model, opt)
    sched.load_state_dict(meta["schedule"])
    history, start = History.from_dict(meta["history"]), meta["epoch"]

class StopAt(Callback):
    def on_step_end(self, run):
        if run.step == stop:
            run.save(out)
            return True

gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, (x, y), 3, 10, schedule=sched,
           callbacks=[StopAt()], progress=False, history=history, initial_epoch=start)
"""


def run_steps(out, stop, resume="-", device="cpu"):
    subprocess.run([sys.executable, "-c", RUNNER, str(out), str(stop), str(resume), device],
                   check=True, timeout=300, env={**os.environ, "GPUNET_DEVICE": device})
    return gpunet.io.read_checkpoint(out)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("split", [7, 6], ids=["mid-epoch", "epoch-boundary"])
def test_12_steps_equal_split_then_resumed_in_a_new_process(tmp_path, split, device):
    """On either device, the dropout masks after a resume continue the stream (the
    GPU's generator state is in the checkpoint, not restarted from the seed)."""
    if device == "cuda" and gpunet.backend.cuda_unavailable_reason() is not None:
        pytest.skip(f"no usable GPU: {gpunet.backend.cuda_unavailable_reason()}")
    full_header, full = run_steps(tmp_path / "full.npz", 12, device=device)
    run_steps(tmp_path / "first.npz", split, device=device)
    header, resumed = run_steps(tmp_path / "resumed.npz", 12, tmp_path / "first.npz", device)
    assert ("cuda" in header["rng"]) == (device == "cuda")
    assert full.keys() == resumed.keys()
    for key in full:  # parameters and optimizer buffers, bit for bit
        assert numpy.array_equal(full[key], resumed[key]), key
    def without_wall_time(history):
        drop = lambda d: {k: v for k, v in d.items() if k != "time"}  # noqa: E731
        return {"steps": history["steps"], "rows": [drop(r) for r in history["rows"]],
                "partial": drop(history["partial"])}

    # the loss of every step, epoch rows and running totals: all equal but wall time
    assert without_wall_time(header["meta"]["history"]) == \
        without_wall_time(full_header["meta"]["history"])
    assert len(header["meta"]["history"]["steps"]) == 12
    assert header["meta"]["schedule"] == full_header["meta"]["schedule"]


def test_non_finite_outputs_name_the_first_layer(rng):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[2].weight.data[0, 0] = numpy.inf
    x = rng.standard_normal((8, 3)).astype("float32")
    y = rng.integers(0, 2, 8)
    with pytest.raises(gpunet.NonFiniteError, match=r"epoch 1, step 1: .*layer 2 \(Linear\)"), \
            numpy.errstate(all="ignore"):
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), 0.1),
                   (x, y), 1, 8, progress=False)
    x[3, 1] = numpy.nan
    with pytest.raises(gpunet.NonFiniteError, match="the input batch"), \
            numpy.errstate(all="ignore"):
        gpunet.fit(nn.Sequential(nn.Linear(3, 2)), losses.SoftmaxCrossEntropy(),
                   optim.SGD(nn.Linear(3, 2).parameters(), 0.1), (x, y), 1, 8, progress=False)


class NaNAfter(nn.Module):
    """Identity whose parameter gradient turns NaN after ``after`` backward passes."""

    def __init__(self, after):
        super().__init__()
        self.scale = nn.Parameter(numpy.ones(1, "float32"))
        self.after, self.calls = after, 0

    def forward(self, x):
        return x * self.scale.data

    def backward(self, dy):
        self.calls += 1
        self.scale.grad += numpy.nan if self.calls > self.after else 0.0
        return dy * self.scale.data


def test_non_finite_gradient_stops_and_keeps_the_last_good_checkpoint(tmp_path, rng):
    x = rng.standard_normal((20, 3)).astype("float32")
    y = rng.integers(0, 2, 20)
    model = nn.Sequential(nn.Linear(3, 2), NaNAfter(after=3))
    path = tmp_path / "best.npz"
    with pytest.raises(gpunet.NonFiniteError, match="epoch 2, step 2: the gradient of 1.scale"):
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), 0.1),
                   (x, y), 5, 10, val_data=(x, y), progress=False,
                   callbacks=[ModelCheckpoint(path, "val_loss")])
    meta = gpunet.load(path, nn.Sequential(nn.Linear(3, 2), NaNAfter(0)))
    assert meta["epoch"] == 1
    assert all(numpy.isfinite(a).all() for a in gpunet.io.read_checkpoint(path)[1].values())


class StopAfter(Callback):
    def __init__(self, steps):
        self.steps = steps

    def on_step_end(self, run):
        return run.step >= self.steps


def test_two_processes_with_one_seed_train_identically():
    code = ("import gpunet, numpy\n"
            "from gpunet import models, optim, losses\n"
            "gpunet.set_device('cpu'); gpunet.manual_seed(3)\n"
            "rng = numpy.random.default_rng(1)\n"
            "x = rng.standard_normal((80, 1, 28, 28)).astype('float32')\n"
            "y = rng.integers(0, 10, 80)\n"
            "m = models.lenet5(batch_norm=True); o = optim.Adam(m.parameters())\n"
            "gpunet.fit(m, losses.SoftmaxCrossEntropy(), o, (x, y), 5, 16, progress=False,\n"
            "           augment=lambda b: gpunet.data.transforms.horizontal_flip(b))\n"
            "import hashlib; h = hashlib.sha256()\n"
            "[h.update(v.tobytes()) for v in m.state_dict().values()]; print(h.hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, timeout=300).stdout for _ in range(2)}
    assert len(digests) == 1


def test_dataset_errors_survive_python_dash_o(tmp_path):
    """No check relies on assert: IDX and CIFAR-10 files are validated under -O too."""
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 5)
    cifar = tmp_path / "cifar-10-batches-bin"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / f"{name}.bin").write_bytes(b"\x00" * 3000)
    code = (f"import gpunet.data as d\n"
            f"loads = (lambda: d.read_idx({str(bad)!r}),\n"
            f"         lambda: d.load_cifar10({str(tmp_path)!r}))\n"
            "for load in loads:\n"
            "    try:\n        load()\n"
            "    except d.DatasetError as e:\n        print('DatasetError:', e)")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("DatasetError:") for line in lines)
    assert "train-images-idx3-ubyte" in lines[0] and "data_batch_1.bin: wrong size" in lines[1]


def test_resume_from_a_corrupt_checkpoint_exits_2(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.npz").write_bytes(b"PK\x03\x04garbage")
    result = subprocess.run([sys.executable, "-m", "gpunet", "train", "--resume", "--out",
                             str(out), "--dataset", "synthetic", "--device", "cpu",
                             "--no-progress"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "last.npz" in result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "last.npz").read_bytes() == b"PK\x03\x04garbage"  # not overwritten
