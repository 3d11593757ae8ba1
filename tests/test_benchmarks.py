"""The benchmark harness: work counts, the side-by-side timer, the table, the JSON
report of ``gpunet bench`` and the memory comparison (on tiny settings: timings
themselves belong in bench/, not in unit tests)."""
import json
import os
import time

import numpy
import pytest

from gpunet import benchmarks, cli, models, nn

from .helpers import (
    CUPY_DOUBLE,
    assert_close,
    gpunet_cli,
    needs_cuda,
    one_gpunet_line,
    only_error_line,
)


def test_work_counts_by_hand():
    conv2 = next(c for c in benchmarks.CASES if c.id == "lenet5/conv2")
    # 2 N K C R S OH OW for the forward; dx and dW cost as much again each
    assert conv2.work() == (3 * 2 * 128 * 16 * 6 * 25 * 10 * 10, "flop")
    strided = next(c for c in benchmarks.CASES if c.id == "alexnet224/conv1")
    assert strided.work()[0] == 3 * 2 * 16 * 64 * 3 * 121 * 55 * 55  # (224+4-11)//4+1 = 55
    assert strided.on_gpu().work()[0] == 2 * strided.work()[0]  # batch 32 on the GPU
    pool = next(c for c in benchmarks.CASES if c.id == "alexnet_cifar/pool1")
    # each way: x once, y and the argmax (or dy and the argmax) once each
    assert pool.work() == (2 * 4 * (64 * 64 * 32 * 32 + 2 * 64 * 64 * 15 * 15), "byte")
    bn = next(c for c in benchmarks.CASES if c.id == "lenet5/bn1")
    assert bn.work() == (2 * 4 * 5 * 128 * 6 * 28 * 28, "byte")


def test_step_flops_count_every_conv_and_linear_layer():
    # LeNet-5 forward per image: conv1 2*6*25*28*28, conv2 2*16*150*10*10,
    # FC 2*(400*120 + 120*84 + 84*10)
    forward = 2 * 6 * 25 * 784 + 2 * 16 * 150 * 100 + 2 * (400 * 120 + 120 * 84 + 84 * 10)
    first = 2 * 6 * 25 * 784
    assert benchmarks.step_flops("lenet5", 1) == 3 * forward - first  # no dx for the input


def test_both_libraries_compute_the_same_on_every_op():
    """The side-by-side timer times the same work: each op's two runners give the
    same output and input gradient (same input, same parameters), on the awkward
    shapes the GPU check's dry run times (strides 2, padding, odd sizes, both
    poolings)."""
    torch = pytest.importorskip("torch")
    cases = benchmarks.awkward.AWKWARD_LAYER_CASES
    assert {case.op for case in cases} == {"conv", "maxpool", "avgpool", "batchnorm"}
    for case in cases:
        ours = benchmarks.gpunet_runner(case)()
        theirs = benchmarks.torch_runner(case, torch)()
        # two orders of summation: float32 rounding grows with the longest sum
        bound = benchmarks.awkward.tolerance("float32", benchmarks.awkward.longest_sum(case.name))
        for what, a, b in zip(("y", "dx"), ours, theirs):
            b = b.detach().numpy()
            atol = max(1e-5, bound * float(numpy.abs(b).max()))  # batch norm dx: ~0
            assert_close(a, b, 1e-4, atol, f"{case.id} {what}")


def test_awkward_cases_count_their_work_with_padding():
    """A pooling case's padding is part of its output size (and so of its work)."""
    pool = benchmarks.awkward.layer_case("max_pool2d")  # 7 x 7, window 3, stride 2, pad 1
    assert pool.padding == 1 and pool.out_hw == (4, 4)
    assert pool.forward_work() == 4.0 * (2 * 3 * 49 + 2 * 2 * 3 * 16)
    avg = benchmarks.awkward.layer_case("avg_pool2d")  # 6 x 5, window 2, stride 2
    assert avg.op == "avgpool" and avg.out_hw == (3, 2)
    assert avg.forward_work() == 4.0 * (2 * 30 + 2 * 6)


def test_the_tolerance_grows_with_the_longest_sum_and_tf32_is_looser():
    tolerance = benchmarks.awkward.tolerance
    assert tolerance("float32") == benchmarks.awkward.TOLERANCE["float32"]
    assert tolerance("float64", 900) == benchmarks.awkward.TOLERANCE["float64"]
    assert tolerance("float32", 900) == pytest.approx(4 * 900 * 2.0**-23)
    assert tolerance("float32", 900, tf32=True) == benchmarks.awkward.TF32_TOLERANCE
    assert tolerance("float64", 900, tf32=True) < 1e-11  # float64 never runs TF32


def test_the_torch_twin_of_a_model_computes_what_it_computes(rng):
    """Built from the gpunet model itself: the same keys and values, and the same
    outputs (the CIFAR AlexNet's pool -> ReLU order, LeNet-5's batch norm)."""
    torch = pytest.importorskip("torch")
    for make, shape in [(lambda: models.lenet5(batch_norm=True), (3, 1, 32, 32)),
                        # 28x28: LeNet-5's first convolution pads it to 32x32 (InputConv)
                        (lambda: models.lenet5(batch_norm=True), (3, 1, 28, 28)),
                        (models.alexnet_cifar, (2, 3, 32, 32)),
                        (lambda: models.alexnet(num_classes=7, lrn=True), (1, 3, 224, 224)),
                        (lambda: models.alexnet(num_classes=7, groups=2), (1, 3, 224, 224))]:
        ours = make().eval()
        twin = benchmarks.torch_twin(ours, torch).eval()
        assert list(twin.state_dict()) == list(ours.state_dict())
        x = rng.standard_normal(shape).astype("float32")
        with torch.no_grad():
            theirs = twin(torch.from_numpy(x)).numpy()
        numpy.testing.assert_allclose(ours(x), theirs, rtol=1e-4, atol=1e-4)
    class Custom(nn.Module):
        pass
    model = nn.Sequential(Custom())
    with pytest.raises(TypeError, match="no PyTorch twin for Custom"):
        benchmarks.torch_twin(model, torch)


def test_side_by_side_timer_reports_each_runner(monkeypatch):
    monkeypatch.setattr(benchmarks.timing, "SWITCH_PAUSE_S", 0.0)
    monkeypatch.setattr(benchmarks.timing, "SETTLE_S", 0.0)
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.002)

    times = benchmarks.time_side_by_side({"fast": fast, "slow": slow}, rounds=3,
                                         min_round_s=0.01)
    assert len(times["slow"]) == len(times["fast"]) == 3
    assert min(times["slow"]) > 0.0015 > max(times["fast"]) >= 0
    assert calls["slow"] >= 3 * 5  # each round repeats until 10 ms have passed


def test_each_turn_settles_untimed_after_the_pause(monkeypatch):
    """A runner that is slow for 40 ms after every idle pause (as a virtual CPU
    woken from idle is) is timed at its steady speed once turns settle first."""
    monkeypatch.setattr(benchmarks.timing, "SWITCH_PAUSE_S", 0.03)
    last = [0.0]
    woke = [0.0]

    def cold_after_idle():
        now = time.perf_counter()
        if now - last[0] > 0.02:
            woke[0] = now
        if now - woke[0] < 0.04:
            time.sleep(0.002)
        last[0] = time.perf_counter()

    monkeypatch.setattr(benchmarks.timing, "SETTLE_S", 0.0)
    unsettled = benchmarks.time_side_by_side({"r": cold_after_idle}, rounds=2,
                                             min_round_s=0.02)["r"]
    monkeypatch.setattr(benchmarks.timing, "SETTLE_S", 0.06)
    settled = benchmarks.time_side_by_side({"r": cold_after_idle}, rounds=2,
                                           min_round_s=0.02)["r"]
    assert min(unsettled) > 0.0015 > 0.0005 > max(settled)


def test_paired_ratio_cancels_a_drifting_load():
    """The load doubles between their turn and ours in round 3: the medians alone
    would compare our three fast rounds with their three slow ones (ratio 4);
    round by round, they take twice our time."""
    ours, theirs = [1.0, 1.0, 1.0, 2.0, 2.0], [2.0, 2.0, 4.0, 4.0, 4.0]
    assert numpy.median(theirs) / numpy.median(ours) == pytest.approx(4.0)
    assert benchmarks.paired_ratio(theirs, ours) == pytest.approx(2.0)


def test_table_and_ratio():
    case = next(c for c in benchmarks.CASES if c.id == "lenet5/train_step")
    row = benchmarks.make_row(case, "cpu", 0.010, 0.020)
    assert row["ratio"] == pytest.approx(2.0)
    assert row["gpunet_images_per_s"] == pytest.approx(12800)
    assert row["gpunet_rate"] == pytest.approx(benchmarks.step_flops("lenet5", 128) / 0.010 / 1e9)
    table = benchmarks.format_table([row, benchmarks.make_row(case, "cpu", 0.010, None)])
    lines = table.splitlines()
    assert lines[0].split() == ["op", "net/case", "shape", "device", "gpunet", "ms", "torch",
                                "ms", "ratio", "rate"]
    assert "lenet5/train_step" in lines[2] and "2.00" in lines[2]
    assert lines[3].split()[5:7] == ["-", "-"]  # no PyTorch: no time, no ratio


def test_cli_bench_prints_the_table_and_saves_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(benchmarks.timing, "SWITCH_PAUSE_S", 0.0)
    monkeypatch.setattr(benchmarks.timing, "SETTLE_S", 0.0)
    tiny = benchmarks.Case("lenet5", "pool1", "maxpool", (2, 6, 28, 28), (2, 2))
    monkeypatch.setattr(benchmarks, "CASES", [tiny])
    code = cli.main(["bench", "--net", "lenet5", "--rounds", "1", "--device", "cpu", "--out",
                     str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "lenet5/pool1" in out and "GB/s" in out
    (path,) = tmp_path.glob("bench-cpu-*.json")
    report = json.loads(path.read_text())
    assert report["environment"]["cores"] == os.cpu_count()
    (row,) = report["rows"]
    assert row["case"] == "pool1" and row["gpunet_ms"] > 0
    assert not list(tmp_path.glob("*.partial"))


def test_cli_bench_refuses_an_empty_selection(capsys):
    assert cli.main(["bench", "--net", "vgg16", "--op", "step"]) == 2  # no VGG step case
    assert "no benchmark case matches" in capsys.readouterr().err


def test_memory_child_measures_the_workload():
    """A fresh process, 2 LeNet-5 steps: the peak above the start is at least the
    activations one step keeps (conv1's columns alone: 25 x 100352 floats = 9.6 MiB)."""
    (row,) = [r for r in benchmarks.memory(["lenet5_epoch"], images=256, with_torch=False)]
    assert row["library"] == "gpunet" and row["workload"] == "lenet5_epoch"
    assert 9.6 < row["extra_mb"] < 500
    assert row["peak_mb"] >= row["before_mb"]
    assert "lenet5_epoch" in benchmarks.format_memory([row])


def test_lenet_is_the_model_the_twin_mirrors():
    assert benchmarks.STEP_WORKLOADS["lenet5"][0] is models.lenet5


def test_median_ms_times_each_call_to_its_synchronize_but_not_the_first():
    """The GPU check's one timer, for gpunet and PyTorch alike: the warm-up call
    (compilation, cuDNN's search) is not timed; each timed call ends with the sync."""
    calls, synced = [], []

    def work():
        time.sleep(0.2 if not calls else 0.0)  # only the first call is slow
        calls.append(1)

    def synchronize():
        time.sleep(0.01)  # the device finishing the call's work
        synced.append(1)

    ms = benchmarks.median_ms(work, 3, synchronize)
    assert len(calls) == len(synced) == 4
    assert 9 <= ms < 150, ms


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_bench_refuses_an_unwritable_out_before_timing_anything(where, tmp_path):
    if where == "under-a-file":  # even root cannot make a folder inside a file
        (tmp_path / "file").write_text("")
        out = str(tmp_path / "file" / "results")
    else:
        out = "/proc/self/gpunet-bench"
    done = gpunet_cli("bench", "--device", "cpu", "--net", "lenet5", "--op", "maxpool",
                      "--rounds", "1", "--no-torch", "--out", out)
    assert done.returncode == 2
    assert "timing" not in done.stderr and done.stdout == ""
    assert only_error_line(done).startswith(f"gpunet: error: --out: cannot write in {out} (")


@pytest.fixture
def tiny_bench(monkeypatch):
    monkeypatch.setattr(benchmarks.timing, "SWITCH_PAUSE_S", 0.0)
    monkeypatch.setattr(benchmarks.timing, "SETTLE_S", 0.0)
    tiny = benchmarks.Case("lenet5", "pool1", "maxpool", (2, 6, 28, 28), (2, 2))
    monkeypatch.setattr(benchmarks, "CASES", [tiny])


@pytest.mark.parametrize("command", [["gradcheck", "lenet5", "--max-per-param", "1"],
                                     ["bench", "--rounds", "1", "--no-torch"]])
def test_gradcheck_and_bench_follow_gpunet_device(command, tiny_bench, monkeypatch, capsys,
                                                  tmp_path):
    monkeypatch.setenv("GPUNET_DEVICE", "cuda:3")
    assert cli.main([*command, *(["--out", str(tmp_path)] if command[0] == "bench" else [])]) \
        == 2
    assert "GPUNET_DEVICE=cuda:3: cannot use cuda:3" in one_gpunet_line(capsys.readouterr().err)


@pytest.mark.gpu
def test_bench_runs_on_the_device_gpunet_device_names(tiny_bench, monkeypatch, tmp_path,
                                                       capsys):
    needs_cuda()
    monkeypatch.setenv("GPUNET_DEVICE", "cuda")
    assert cli.main(["bench", "--rounds", "1", "--no-torch", "--out", str(tmp_path)]) == 0
    assert "cuda:0" in capsys.readouterr().out
    assert len(list(tmp_path.glob("bench-cuda0-*.json"))) == 1


@pytest.mark.gpu
def test_bench_on_cuda_with_pytorchs_cpu_build_skips_its_column_in_one_line(
        tiny_bench, tmp_path, capsys):
    needs_cuda()
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this PyTorch can use the GPU")
    assert cli.main(["bench", "--device", "cuda", "--rounds", "1", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert one_gpunet_line(captured.err).startswith(
        "gpunet: the PyTorch column is skipped: PyTorch ") and "a CPU build" in captured.err
    (path,) = tmp_path.glob("bench-cuda0-*.json")
    (row,) = json.loads(path.read_text())["rows"]
    assert row["torch_ms"] is None and row["gpunet_ms"] > 0


@pytest.mark.gpu
def test_bench_memory_on_cuda_measures_the_device_pool(tiny_bench, monkeypatch, tmp_path,
                                                       capsys):
    needs_cuda()
    if CUPY_DOUBLE:
        monkeypatch.setenv("GPUNET_KERNELS", "0")  # the emulator: far too slow for a step
    (row,) = benchmarks.memory(["alexnet_cifar_step"], with_torch=False, device="cuda:0")
    assert row["device"] == "cuda:0" and row["measure"] == "cupy"
    # at least what a step keeps on the device: conv1's output, 64 x 64 x 32 x 32 floats
    assert 16 <= row["extra_mb"] < 4000
    assert benchmarks.format_memory([row]).startswith(
        "peak memory: GPU memory held by CuPy's pool on cuda:0")
    assert cli.main(["bench", "--device", "cuda", "--rounds", "1", "--no-torch", "--memory",
                     "--images", "64", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "peak memory: GPU memory held by CuPy's pool on cuda:0" in out
    assert "resident" not in out


def test_the_pytorch_twin_has_no_bias_before_batch_norm_either(rng):
    torch = pytest.importorskip("torch")
    ours = models.lenet5(batch_norm=True).eval()
    twin = benchmarks.torch_twin(ours, torch).eval()
    assert set(twin.state_dict()) - {k for k in twin.state_dict()
                                     if k.endswith("num_batches_tracked")} \
        == set(ours.state_dict()) - {k for k in ours.state_dict()
                                     if k.endswith("num_batches_tracked")}
    assert twin[0].bias is None and twin[9].bias is None
    x = rng.standard_normal((3, 1, 32, 32)).astype(numpy.float32)
    assert_close(twin(torch.from_numpy(x)).detach().numpy(), ours(x), 1e-4, 1e-5, "twin")


def test_the_optimizer_families_step_as_torch_optim_does():
    """The awkward optimizer cases (xp path, float64) against ``torch.optim`` on the
    same parameters and hand-set gradients: weight decay on the weights (sizes 1001
    and 1) and not on the bias of 7, three steps (Adam's bias corrections, SGD's
    buffer made then updated); the notes' Momentum has no twin in torch.optim."""
    torch = pytest.importorskip("torch")
    awkward = benchmarks.awkward
    twins = {"Adam": "Adam", "AdamW": "AdamW", "SGD": "SGD", "RMSProp": "RMSprop"}
    shapes = awkward.OPTIMIZER_SHAPES
    assert sorted(int(numpy.prod(shape)) for shape in shapes) == [1, 7, 1001]
    for family, (name, hyper) in awkward.OPTIMIZER_CASES.items():
        if name not in twins:
            continue
        assert awkward.family_shape(family) == shapes
        assert awkward.longest_sum(family) == awkward.OPTIMIZER_STEPS == 3
        got = awkward.family_outputs(family, "float64", False, numpy.asarray, seed=5)
        rng = numpy.random.default_rng(5)  # the family's draws, in its order
        params = [torch.tensor(rng.standard_normal(shape), requires_grad=True)
                  for shape in shapes]
        hyper = {"alpha" if k == "beta" else k: v for k, v in hyper.items()}
        decay = hyper.pop("weight_decay")
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": decay},
                  {"params": [p for p in params if p.ndim == 1], "weight_decay": 0.0}]
        twin = getattr(torch.optim, twins[name])(groups, **hyper)
        for _ in range(awkward.OPTIMIZER_STEPS):
            for p in params:
                p.grad = torch.tensor(rng.standard_normal(tuple(p.shape)))
            twin.step()
        state = [twin.state[p][key].numpy() for p in params for key in sorted(twin.state[p])
                 if key != "step" and twin.state[p][key] is not None]
        want = [p.detach().numpy() for p in params] + state
        assert len(got) == len(want) + len(params), family
        for i, (a, b) in enumerate(zip(got, want)):
            assert_close(a, b, 1e-10, 1e-12, f"{family} output {i}")
        for grad in got[len(want):]:  # the last zero_grad
            assert not numpy.any(grad), family
