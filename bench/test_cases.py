"""Every case of :mod:`gpunet.benchmarks` (layers at LeNet-5, CIFAR-AlexNet,
AlexNet-224 and VGG-16 shapes; LeNet-5 and CIFAR-AlexNet training steps) timed by
pytest-benchmark, gpunet and PyTorch on the same shapes in the same run, on the
CPU and, when there is one, on the GPU (each call ends with a device sync;
warm-up rounds absorb kernel compilation).

``pytest bench/`` prints the ratio table at the end; ``gpunet bench`` is the
same table without pytest.
"""
import pytest

from gpunet import backend, benchmarks

DEVICES = ["cpu"] + (["cuda"] if backend.cuda_unavailable_reason() is None else [])


def _ids(case):
    return case.id


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", benchmarks.CASES, ids=_ids)
def test_gpunet(benchmark, record, case, device):
    run = benchmarks.gpunet_runner(case, device)
    benchmark.pedantic(run, rounds=5, warmup_rounds=2)
    record(case, device, "gpunet", benchmark)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", benchmarks.CASES, ids=_ids)
def test_torch(benchmark, record, case, device):
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    run = benchmarks.torch_runner(case, torch, device)
    benchmark.pedantic(run, rounds=5, warmup_rounds=2)
    record(case, device, "torch", benchmark)
