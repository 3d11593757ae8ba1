"""The command line: real runs on small data, and misuse that exits 2 in one line."""
import csv
import os
import subprocess
import sys
import warnings

import pytest

from gpunet.cli import main

from .helpers import HAS_MATPLOTLIB

QUICK = ["--dataset", "synthetic", "--limit", "300", "--dev-size", "60", "--batch-size", "32",
         "--no-progress", "--device", "cpu", "--seed", "1"]


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
