"""The ``xp`` fixture: every op test runs on NumPy, and on CuPy where a GPU answers.

``GPUNET_CUPY_DOUBLE=1`` puts the CuPy test double (tests/cupy_double) in CuPy's
place before gpunet imports it: ``cuda`` is then a usable device and the tests
marked ``gpu`` run through it, subprocesses (the CLI) included.
"""
import contextlib
import os
import sys

import numpy
import pytest
from hypothesis import HealthCheck, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUPY_DOUBLE = os.environ.get("GPUNET_CUPY_DOUBLE", "0") == "1"
if CUPY_DOUBLE:
    _double_dir = os.path.join(ROOT, "tests", "cupy_double")
    if "cupy" in sys.modules and not getattr(sys.modules["cupy"], "IS_TEST_DOUBLE", False):
        raise RuntimeError("GPUNET_CUPY_DOUBLE=1 but the real CuPy was imported first")
    sys.path.insert(0, _double_dir)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [_double_dir, ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

from gpunet import backend, config, ops  # noqa: E402 - after the double is in place

settings.register_profile(
    "gpunet", max_examples=30, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("gpunet")


@pytest.fixture(params=["numpy", "numpy-textbook", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test; new layers are created on its device. NumPy
    arrays run gpunet's CPU accelerators (``numpy``) or, with them turned off, the
    textbook xp path of ``gpunet.ops`` (``numpy-textbook``); CuPy arrays run the
    CUDA kernels."""
    if request.param == "numpy-textbook":
        enabled = ops.cpu_accelerators_enabled()
        ops.set_cpu_accelerators_enabled(False)
        request.addfinalizer(lambda: ops.set_cpu_accelerators_enabled(enabled))
    if request.param == "cupy":
        reason = backend.cuda_unavailable_reason()
        if reason is not None:
            pytest.skip(f"no usable GPU: {reason}")
        device = backend.set_device("cuda")
    else:
        device = backend.set_device("cpu")
    backend.manual_seed(0)
    yield device.xp
    backend.set_device("cpu")


@pytest.fixture(autouse=True)
def _cpu_by_default():
    """Tests that do not ask for ``xp`` build their layers on the CPU."""
    backend.set_device("cpu")
    backend.manual_seed(1234)


@pytest.fixture
def gpunet_settings():
    """``gpunet_settings(poison=True)``: ``gpunet.config`` settings for the rest of the
    test, undone after it."""
    with contextlib.ExitStack() as stack:
        yield lambda **values: stack.enter_context(config.override(**values))


@pytest.fixture
def rng():
    return numpy.random.default_rng(20261124)
