"""Backend selection in the three situations: no CuPy, CuPy without a GPU, a GPU.

Each situation runs in a fresh interpreter, since GPUNET_DEVICE is read at import.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy
import pytest

import gpunet
from gpunet import backend

HIDE_CUPY = "import sys; sys.modules['cupy'] = None\n"
PROBE = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import gpunet
    outcome = {}
    try:
        outcome["device"] = gpunet.get_device().name
        gpunet.get_device()
    except Exception as exc:
        outcome["error"] = type(exc).__name__ + ": " + str(exc)
    try:
        gpunet.set_device("cuda")
        outcome["cuda"] = "ok"
    except Exception as exc:
        outcome["cuda"] = type(exc).__name__ + ": " + str(exc)
outcome["warnings"] = [str(w.message) for w in caught
                       if issubclass(w.category, gpunet.DeviceFallbackWarning)]
print(json.dumps(outcome))
"""


def _probe(prefix="", device=None):
    env = dict(os.environ)
    env.pop("GPUNET_DEVICE", None)
    if device is not None:
        env["GPUNET_DEVICE"] = device
    out = subprocess.run([sys.executable, "-c", prefix + PROBE], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_without_cupy_auto_falls_back_with_one_warning():
    result = _probe(HIDE_CUPY)
    assert result["device"] == "cpu"
    assert len(result["warnings"]) == 1 and "CuPy is not installed" in result["warnings"][0]
    assert result["cuda"].startswith("DeviceError") and "CuPy is not installed" in result["cuda"]


@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="CuPy is not installed")
def test_cupy_without_a_gpu_falls_back_and_cuda_raises():
    if backend.cuda_unavailable_reason() is None:
        pytest.skip("a GPU is usable here")
    result = _probe()
    assert result["device"] == "cpu"
    reason = backend.cuda_unavailable_reason()  # NO_GPU without /dev/nvidia*, else CUDA's
    assert result["warnings"] == [f"using the CPU because {reason}"]
    assert result["cuda"] == f"DeviceError: cannot use cuda:0: {reason}"


def test_gpunet_device_environment_variable():
    assert _probe(HIDE_CUPY, "cpu") == {
        "device": "cpu", "warnings": [],
        "cuda": _probe(HIDE_CUPY)["cuda"]}
    forced = _probe(HIDE_CUPY, "cuda")
    assert forced["error"].startswith("DeviceError") and forced["warnings"] == []
    bogus = _probe(HIDE_CUPY, "tpu")
    assert bogus["error"].startswith("ValueError: GPUNET_DEVICE") and "'tpu'" in bogus["error"]


@pytest.mark.gpu
def test_with_a_gpu_cuda_is_chosen_and_arrays_move():
    reason = backend.cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")
    assert _probe()["device"] == "cuda:0" and _probe()["warnings"] == []
    device = gpunet.set_device("cuda")
    x = numpy.arange(6.0).reshape(2, 3)
    on_gpu = gpunet.to_device(x, device)
    assert gpunet.get_array_module(on_gpu).__name__ == "cupy"
    assert numpy.array_equal(gpunet.to_numpy(on_gpu), x)
    with pytest.raises(TypeError, match="x is on cpu but weight is on cuda:0"):
        backend.common_array_module(x=x, weight=on_gpu)
    model = gpunet.nn.Linear(3, 2).to("cuda")
    assert gpunet.get_array_module(model.weight.grad).__name__ == "cupy"
    with pytest.raises(TypeError, match="cuda:0"):
        model(x.astype("float32"))
    gpunet.set_device("cpu")


@pytest.mark.parametrize("spec,error", [("gpu", ValueError), ("cuda:x", ValueError),
                                        (3, TypeError), ("", ValueError)])
def test_bad_device_specs(spec, error):
    with pytest.raises(error, match="device"):
        gpunet.set_device(spec)


def test_device_objects_and_cpu_helpers():
    cpu = gpunet.set_device("cpu")
    assert cpu.name == "cpu" and cpu.xp is numpy and str(cpu) == "cpu"
    assert gpunet.get_device() is cpu
    assert backend.Device("cuda", 1).name == "cuda:1"
    x = numpy.ones(3)
    assert gpunet.get_array_module(x) is numpy and gpunet.to_numpy(x) is x
    assert gpunet.to_device([1, 2], "cpu").tolist() == [1, 2]
    cpu.synchronize()


def test_manual_seed_validates():
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError, match="manual_seed"):
            gpunet.manual_seed(bad)


def test_two_processes_with_the_same_seed_agree():
    code = ("import gpunet, numpy; gpunet.set_device('cpu'); gpunet.manual_seed(11);"
            "m = gpunet.nn.Linear(4, 3); d = gpunet.nn.Dropout(0.5);"
            "print(float(m.weight.data.sum()), float(d(numpy.ones((5, 5), 'float32')).sum()))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=120).stdout for _ in range(2)}
    assert len(runs) == 1


FAULTS_PER_STEP = """
import resource, numpy, gpunet
gpunet.set_device("cpu")
gpunet.backend.tune_cpu_allocator()  # as fit and the CLI do
model, loss = gpunet.models.alexnet_cifar(), gpunet.losses.SoftmaxCrossEntropy()
x = numpy.random.default_rng(0).standard_normal((16, 3, 32, 32), dtype=numpy.float32)
y = numpy.arange(16) % 10
def step():
    loss.forward(model.forward(x), y)
    model.backward(loss.backward(), input_grad=False)
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 4)
"""


@pytest.mark.skipif(backend._glibc() is None, reason="glibc's mallopt only")
def test_freed_cpu_memory_is_reused_instead_of_faulted_in_again():
    """An AlexNet-CIFAR step (batch 16) frees and reallocates tens of MB; by default
    glibc returns much of it to the OS and faults it in again (about 12,000 faults
    a step)."""
    def faults(keep):
        env = {**os.environ, "GPUNET_KEEP_FREED_MEMORY": keep}
        out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP], env=env, text=True,
                             capture_output=True, check=True, timeout=120)
        return int(out.stdout.split()[-1])
    kept, default = faults("1"), faults("0")
    assert kept < 200 < 1000 < default, (kept, default)
    assert backend.keep_freed_cpu_memory() is True
    backend.release_cached_memory()  # malloc_trim: must not break later allocations
    assert numpy.ones(1 << 22).sum() == 1 << 22
