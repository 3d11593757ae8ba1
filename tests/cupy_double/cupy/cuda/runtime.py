"""``cupy.cuda.runtime`` of the double: the device it reports is the double."""
import os as _os

from .. import _core
from .._core import DEVICE_MEMORY as TOTAL_MEMORY

DEVICE_NAME = b"CuPy test double (NumPy on the CPU, not a GPU)"
COMPUTE_CAPABILITY = "90"  # the kernels are compiled for sm_80 and sm_90; launch limits: sm_90
is_hip = False
_CUDA_VERSION = 13000


class CUDARuntimeError(RuntimeError):
    def __init__(self, status):
        self.status = status
        super().__init__(f"CUDA runtime error {status} (CuPy test double)")


# how many devices the double reports (tests of several GPUs set 2)
DEVICE_COUNT = int(_os.environ.get("GPUNET_CUPY_DOUBLE_DEVICES", "1"))


def getDeviceCount():  # noqa: N802 - CuPy's names
    return DEVICE_COUNT


def getDevice():  # noqa: N802
    return _core.current_device()


def setDevice(device):  # noqa: N802
    if not 0 <= device < DEVICE_COUNT:
        raise CUDARuntimeError(101)
    _core.set_current_device(device)


def runtimeGetVersion():  # noqa: N802
    return _CUDA_VERSION


def driverGetVersion():  # noqa: N802
    return _CUDA_VERSION


def deviceSynchronize():  # noqa: N802
    pass


def getDeviceProperties(device):  # noqa: N802
    if not 0 <= device < DEVICE_COUNT:
        raise CUDARuntimeError(101)
    return {"name": DEVICE_NAME, "major": int(COMPUTE_CAPABILITY[0]),
            "minor": int(COMPUTE_CAPABILITY[1]), "totalGlobalMem": TOTAL_MEMORY,
            "multiProcessorCount": 1, "maxThreadsPerBlock": 1024,
            "maxThreadsDim": (1024, 1024, 64), "maxGridSize": (2**31 - 1, 65535, 65535),
            "sharedMemPerBlock": 48 * 1024, "sharedMemPerBlockOptin": 227 * 1024,
            "warpSize": 32, "clockRate": 0, "memoryClockRate": 0, "memoryBusWidth": 0,
            "l2CacheSize": 0}


def memGetInfo():  # noqa: N802
    from .memory import default_pool
    return default_pool.free_device_bytes(), TOTAL_MEMORY

