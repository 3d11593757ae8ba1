"""Data-parallel training through ``mpiexec`` (gpunet.distributed): two processes
take the steps one process takes with twice the batch, a failing or killed rank
ends the job, a resumed run continues bit for bit, ranks that disagree are refused."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy
import pytest

import gpunet
from gpunet import distributed, nn

from .helpers import CUPY_DOUBLE

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install gpunet[mpi])")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One script for both runs: batch 64 in one process, or 32 per process on two.
TRAIN = textwrap.dedent("""
    import sys, numpy, gpunet
    from gpunet import losses, models, nn, optim
    dtype, kind, device, out, processes = sys.argv[1:6]
    gpunet.set_device(device)
    if processes != "1":
        gpunet.distributed.init()  # before the model: each rank's GPU is its local rank
    gpunet.manual_seed(5)
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((640, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, 640)
    if kind == "lenet5_dropout":
        layers = list(models.lenet5())
        model = nn.Sequential(*layers[:7], nn.Dropout(0.3), *layers[7:])
    elif kind.startswith("lenet5_batch_norm"):
        model = models.lenet5(batch_norm=True)
        if kind.endswith("synced") and processes != "1":
            gpunet.distributed.sync_batch_norm(model)
    else:
        model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 13 * 13, 10))
    model.to(device, dtype=dtype)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    distributed = processes != "1"
    history = gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, (x, y), 1,
                         64 // int(processes), progress=False, distributed=distributed)
    assert len(history.steps) == 10
    if distributed and device == "cuda":  # everything on this rank's GPU
        gpu = gpunet.get_device().index
        found = {int(a.device.id) for p in model.parameters() for a in (p.data, p.grad)}
        assert found == {gpu}, (found, gpu)
        print(f"rank {gpunet.distributed.world().rank} trained on cuda:{gpu}")
    if not distributed or gpunet.distributed.world().is_root:
        numpy.savez(out, steps=numpy.array(history.steps), **model.state_dict())
""")


def _mpiexec(processes, *command, timeout=240, env=None):
    return subprocess.run([MPIEXEC, "-n", str(processes), *command], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, PYTHONWARNINGS="ignore", **(env or {})))


def _python(tmp_path, source):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(source))
    return [sys.executable, str(path)]


def _train_both_ways(tmp_path, dtype, kind, device="cpu"):
    script = _python(tmp_path, TRAIN)
    one = subprocess.run([*script, dtype, kind, device, str(tmp_path / "one.npz"), "1"],
                         capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert one.returncode == 0, one.stderr
    two = _mpiexec(2, *script, dtype, kind, device, str(tmp_path / "two.npz"), "2")
    assert two.returncode == 0, two.stderr + two.stdout
    return numpy.load(tmp_path / "one.npz"), numpy.load(tmp_path / "two.npz")


def _max_errors(reference, result):
    """``{key: max |result - reference|}`` relative to the array's scale (at least 1)."""
    return {key: float(numpy.abs(result[key] - reference[key]).max())
            / max(1.0, float(numpy.abs(reference[key]).max())) for key in reference.files}


def _rounding_spread(tmp_path, dtype, kind, reference):
    """How far one process's steps move when only their rounding changes: the same
    run on the textbook path (``GPUNET_CPU_ACCEL=0``: other summation orders, the
    same dropout masks), compared key by key with ``reference``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = _python(tmp_path, TRAIN)
    run = subprocess.run([*script, dtype, kind, "cpu", str(tmp_path / "textbook.npz"), "1"],
                         capture_output=True, text=True, timeout=240, cwd=ROOT,
                         env=dict(os.environ, GPUNET_CPU_ACCEL="0"))
    assert run.returncode == 0, run.stderr
    return _max_errors(reference, numpy.load(tmp_path / "textbook.npz"))


@needs_mpiexec
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["conv", "lenet5_dropout", "lenet5_batch_norm_synced"])
def test_two_processes_take_the_steps_of_one_with_twice_the_batch(tmp_path, dtype, kind):
    """Two processes must differ from one by no more than rounding does: 4 times
    what one process's steps move when only their summation order changes (the
    textbook path against the accelerators), or 32 units in the last place where
    both are closer. That bound follows the ten steps' own amplification of
    rounding on any CPU, BLAS and thread count; a fixed float32 bound (1e-5) held
    on one machine and failed on another. float64 keeps an absolute 1e-12 as well."""
    one, two = _train_both_ways(tmp_path, dtype, kind)
    assert sorted(one.files) == sorted(two.files)
    spread = _rounding_spread(tmp_path / "textbook", dtype, kind, one)
    floor = 32 * float(numpy.finfo(dtype).eps)
    for key, error in _max_errors(one, two).items():
        bound = 4 * max(spread[key], floor)
        assert error <= (min(bound, 1e-12) if dtype == "float64" else bound), \
            (key, error, "rounding spread:", spread[key])


@needs_mpiexec
def test_batch_norm_keeps_each_processs_statistics_unless_synchronised(tmp_path):
    """By default (as PyTorch's DDP) each process normalises its 32 rows by their own
    statistics: not the steps of one process at 64 (the synchronised test above is)."""
    one, two = _train_both_ways(tmp_path, "float64", "lenet5_batch_norm")
    assert float(numpy.abs(one["0.weight"] - two["0.weight"]).max()) > 1e-6


@needs_mpiexec
@pytest.mark.gpu
@pytest.mark.parametrize("gpus", [1, 2])
def test_two_processes_on_cupy_arrays_match_one_on_the_cpu(tmp_path, gpus):
    """CuPy gradients go through NCCL where CuPy has it, else host copies over MPI (the
    CuPy test double's case): either way the steps of one process. With two GPUs rank
    1 trains on GPU 1 (everything it makes lands there: its first forward used to
    fail with biases on GPU 0); with one, the ranks share it."""
    if not CUPY_DOUBLE and gpunet.backend.cuda_unavailable_reason() is not None:
        pytest.skip("no usable GPU")
    if not CUPY_DOUBLE and gpunet.backend.Device("cuda").xp.cuda.runtime.getDeviceCount() < gpus:
        pytest.skip(f"fewer than {gpus} GPUs")
    script = _python(tmp_path, TRAIN)
    one = subprocess.run([*script, "float64", "conv", "cpu", str(tmp_path / "one.npz"), "1"],
                         capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert one.returncode == 0, one.stderr
    two = _mpiexec(2, *script, "float64", "conv", "cuda", str(tmp_path / "two.npz"), "2",
                   env={"GPUNET_CUPY_DOUBLE_DEVICES": str(gpus)})
    assert f"rank 1 trained on cuda:{gpus - 1}" in two.stdout, two.stdout + two.stderr
    assert two.returncode == 0, two.stderr + two.stdout
    one, two = numpy.load(tmp_path / "one.npz"), numpy.load(tmp_path / "two.npz")
    for key in one.files:
        numpy.testing.assert_allclose(two[key], one[key], rtol=1e-10, atol=1e-12, err_msg=key)


@needs_mpiexec
def test_a_rank_that_raises_ends_the_job_with_its_one_line_error(tmp_path):
    script = _python(tmp_path, """
        import numpy, gpunet
        from gpunet import losses, nn, optim
        gpunet.manual_seed(5)
        x = numpy.random.default_rng(0).standard_normal((640, 8)).astype("float32")
        x[2 * 64 + 40] = numpy.nan  # step 3, in rank 1's half (no shuffling)
        y = numpy.arange(640) % 3
        model = nn.Sequential(nn.Linear(8, 3))
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), 0.1),
                   (x, y), 1, 32, progress=False, shuffle=False, distributed=True)
        """)
    start = time.monotonic()
    done = _mpiexec(2, *script, timeout=60)
    assert time.monotonic() - start < 30
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("gpunet:")]
    assert lines == ["gpunet: rank 1/2: NonFiniteError: epoch 1, step 3: the outputs became "
                     "NaN or Inf, first at the input batch; lower the learning rate or check "
                     "the data"], done.stderr


@needs_mpiexec
def test_ranks_with_different_models_or_data_are_refused_at_the_start(tmp_path):
    script = _python(tmp_path, """
        import sys, numpy, gpunet
        from gpunet import distributed, losses, nn, optim
        rank = distributed.init().rank
        x = numpy.ones((64, 8), "float32")
        if sys.argv[1] == "data" and rank == 1:
            x[5] = 2.0
        width = 4 if sys.argv[1] == "model" and rank == 1 else 3
        model = nn.Sequential(nn.Linear(8, width))
        gpunet.fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), 0.1),
                   (x, numpy.zeros(64, int)), 1, 32, progress=False, distributed=True)
        """)
    done = _mpiexec(2, *script, "model", timeout=60)
    assert done.returncode == 1
    assert ("DistributedError: the ranks' models differ: rank 0 has 0.weight (3, 8) float32, "
            "rank 1 has 0.weight (4, 8) float32") in done.stderr, done.stderr
    done = _mpiexec(2, *script, "data", timeout=60)
    assert done.returncode == 1
    assert "the ranks' training data differ: rank 0 has train_data x: shape (64, 8)" \
        in done.stderr, done.stderr


QUICK = ["--dataset", "synthetic", "--limit", "400", "--dev-size", "80", "--batch-size", "16",
         "--no-progress", "--device", "cpu", "--seed", "1", "--flip", "0.5", "--distributed"]


@needs_mpiexec
def test_the_cli_through_mpiexec_resumes_bit_for_bit(tmp_path):
    """Two epochs straight, or one and then --resume for the second: the same
    parameters, optimizer state and history, bit for bit; rank 0 alone writes."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    command = [sys.executable, "-m", "gpunet", "train", *QUICK]
    done = _mpiexec(2, *command, "--epochs", "2", "--out", str(straight))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("test accuracy:") == 1  # rank 0 alone prints
    assert _mpiexec(2, *command, "--epochs", "1", "--out", str(resumed)).returncode == 0
    done = _mpiexec(2, *command, "--epochs", "2", "--out", str(resumed), "--resume")
    assert done.returncode == 0, done.stderr
    a, b = numpy.load(straight / "last.npz"), numpy.load(resumed / "last.npz")
    for key in a.files:
        if key != "__meta__":  # holds the wall-clock times
            assert numpy.array_equal(a[key], b[key]), key
    steps = [gpunet.io.read_checkpoint(str(run / "last.npz"))[0]["meta"]["history"]["steps"]
             for run in (straight, resumed)]
    assert steps[0] == steps[1] and len(steps[0]) == 2 * (320 // 32)


def _saved_epoch(path) -> int:
    """The epoch of the checkpoint at ``path`` (-1 before there is one): the first is
    written before epoch 1's validation, at epoch 0 and a partial history."""
    if not path.exists():
        return -1
    return gpunet.io.read_checkpoint(str(path))[0]["meta"]["epoch"]


def _signal_a_rank_of_a_running_job(tmp_path, rank, signum):
    """Start a long distributed run, wait for a checkpoint after epoch 1, send ``signum``
    to ``rank`` alone; ``(seconds until the job ended, (returncode, stdout, stderr),
    the run folder)``."""
    out = tmp_path / "run"
    job = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "gpunet", "train",
                            *QUICK, "--limit", "4000", "--epochs", "200", "--out", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           env=dict(os.environ, PYTHONWARNINGS="ignore"))
    try:
        ranks = {}
        deadline = time.monotonic() + 60
        while len(ranks) < 2 or _saved_epoch(out / "last.npz") < 1:
            assert time.monotonic() < deadline, "the job did not start"
            ranks = _ranks_of(job.pid)
            time.sleep(0.2)
        os.kill(ranks[rank], signum)
        sent = time.monotonic()
        stdout, stderr = job.communicate(timeout=60)
    finally:
        job.kill()
    return time.monotonic() - sent, (job.returncode, stdout, stderr), out


@needs_mpiexec
def test_a_killed_rank_ends_the_job_and_leaves_a_whole_checkpoint(tmp_path):
    took, (code, stdout, stderr), out = _signal_a_rank_of_a_running_job(tmp_path, 1,
                                                                        signal.SIGKILL)
    assert took < 30
    assert code != 0
    assert "Killed" in stdout + stderr or "signal 9" in stdout + stderr, stdout + stderr
    header, _ = gpunet.io.read_checkpoint(str(out / "last.npz"))  # a whole checkpoint
    assert header["meta"]["epoch"] >= 1


@needs_mpiexec
@pytest.mark.parametrize("interrupted", [0, 1], ids=["rank-0", "rank-1"])
def test_an_interrupted_rank_ends_every_rank(tmp_path, interrupted):
    """SIGINT to one rank alone (Ctrl-C reaches them at different moments): rank 0
    used to return 130 and finalise while rank 1 waited in an Allgather for ever. Now
    the job ends within seconds, rank 0 saying what was saved, and the checkpoint on
    disk is whole."""
    took, (code, _, stderr), out = _signal_a_rank_of_a_running_job(tmp_path, interrupted,
                                                                   signal.SIGINT)
    assert took < 20, "the other rank kept the job alive"
    assert code != 0
    said = "gpunet: interrupted;" if interrupted == 0 else "gpunet: rank 1/2: interrupted"
    assert said in stderr, stderr
    header, _ = gpunet.io.read_checkpoint(str(out / "last.npz"))
    assert header["meta"]["epoch"] >= 1


def _ranks_of(root_pid) -> dict[int, int]:
    """``{rank: pid}`` of the processes below ``root_pid`` that MPI gave a rank."""
    ranks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                items = f.read().split(b"\0")
            environ = dict(item.split(b"=", 1) for item in items if b"=" in item)
        except OSError:
            continue
        if b"PMI_RANK" in environ and _descends_from(int(entry), root_pid):
            ranks[int(environ[b"PMI_RANK"])] = int(entry)
    return ranks


def _descends_from(pid, ancestor) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


# -- one process: the arithmetic ---------------------------------------------------------------
def _world(rank, size):
    world = object.__new__(distributed.World)
    world.rank, world.size = rank, size
    return world


def test_the_ranks_slices_cover_a_batch_in_order_and_drop_only_the_remainder():
    assert [_world(r, 2).shard(64) for r in range(2)] == [(0, 32), (32, 64)]
    assert [_world(r, 3).shard(64) for r in range(3)] == [(0, 21), (21, 42), (42, 63)]
    assert _world(2, 4).shard(3) == (0, 0)  # fewer rows than ranks: nobody trains on it


def test_buckets_keep_the_order_and_one_dtype_each(monkeypatch):
    monkeypatch.setattr(distributed, "BUCKET_BYTES", 64)
    arrays = [numpy.zeros(4), numpy.zeros(4), numpy.zeros(2, "float32"), numpy.zeros(20)]
    buckets = list(distributed._buckets(arrays))
    assert [[a.size for a in b] for b in buckets] == [[4, 4], [2], [20]]
    assert [a for b in buckets for a in b] == arrays


def test_dropout_keeps_its_rows_of_the_global_batchs_mask():
    x = numpy.ones((8, 5))
    gpunet.manual_seed(3)
    whole = nn.Dropout(0.5)(x)
    for start, stop in [(0, 4), (4, 8)]:
        gpunet.manual_seed(3)
        with distributed.batch_shard(start, stop, 8):
            assert numpy.array_equal(nn.Dropout(0.5)(x[start:stop]), whole[start:stop])
    assert distributed.current_shard() is None


def test_one_process_is_a_world_of_one(rng):
    """Without mpiexec, distributed=True trains as a plain run does."""
    from gpunet import losses, optim
    x, y = rng.standard_normal((96, 6)), rng.integers(0, 3, 96)
    results = []
    for flag in (False, True):
        gpunet.manual_seed(2)
        model = nn.Sequential(nn.Linear(6, 3)).to(dtype="float64")
        history = gpunet.fit(model, losses.SoftmaxCrossEntropy(),
                             optim.SGD(model.parameters(), 0.1), (x, y), 2, 32,
                             progress=False, distributed=flag)
        results.append((history.steps, model.state_dict()))
    assert results[0][0] == results[1][0]
    for key in results[0][1]:
        assert numpy.array_equal(results[0][1][key], results[1][1][key])
    assert distributed.world().size == 1
    from gpunet import _process_group
    assert _process_group.default() is distributed.world()  # what SyncBatchNorm reduces over


@needs_mpiexec
def test_the_scaling_benchmark_runs_on_one_and_two_processes(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "scaling.py"),
                           "--processes", "1", "2", "--steps", "2", "--warmup", "1",
                           "--batch", "16", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (saved,) = tmp_path.glob("scaling-lenet5-*.json")
    rows = json.loads(saved.read_text())["rows"]
    assert [r["processes"] for r in rows] == [1, 2]
    assert rows[1]["gradient_bytes"] == 4 * 61706  # LeNet-5's parameters in float32
    assert all(r["images_per_s"] > 0 for r in rows) and rows[1]["all_reduce_ms_per_step"] > 0
    assert [p["bytes"] for p in rows[1]["all_reduce_curve"]][:2] == [1024, 4096]


def test_sync_batch_norm_needs_distributed_batch_norm(capsys):
    from gpunet import cli
    assert cli.main(["train", *QUICK, "--sync-batch-norm", "--out", "/nonexistent/x"]) == 2
    assert "--sync-batch-norm: needs --distributed and --batch-norm" in capsys.readouterr().err


def test_without_mpi4py_the_cli_says_what_to_install(monkeypatch, capsys, tmp_path):
    from gpunet import cli
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now fails
    monkeypatch.setattr(distributed, "_world", None)
    assert cli.main(["train", *QUICK, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "distributed training needs mpi4py" in err and "gpunet[mpi]" in err


def test_launched_processes_reads_the_launchers_variables(monkeypatch):
    from gpunet.distributed import launched_processes
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE",
                 "MPI_LOCALNRANKS"):
        monkeypatch.delenv(name, raising=False)
    assert launched_processes() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert launched_processes() == 4
