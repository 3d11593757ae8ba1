"""The ``xp`` fixture: every op test runs on NumPy, and on CuPy where a GPU answers."""
import numpy
import pytest
from hypothesis import HealthCheck, settings

from gpunet import backend

settings.register_profile(
    "gpunet", max_examples=30, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("gpunet")


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test; new layers are created on its device."""
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
def rng():
    return numpy.random.default_rng(20261124)
