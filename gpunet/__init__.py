"""gpunet: a CNN library you can read end to end, on NumPy or CuPy.

The backend names are re-exported here: ``gpunet.set_device("auto")``,
``gpunet.manual_seed(0)``, ``gpunet.to_numpy(x)``.
"""
from . import init, losses, nn, ops, optim
from .backend import (
                      Device,
                      DeviceError,
                      DeviceFallbackWarning,
                      get_array_module,
                      get_device,
                      manual_seed,
                      set_device,
                      to_device,
                      to_numpy,
)
from .gradcheck import GradcheckReport, gradcheck
from .optim import ewma

__version__ = "0.1.0"

__all__ = [
    "Device", "DeviceError", "DeviceFallbackWarning", "GradcheckReport", "ewma",
    "get_array_module", "get_device", "gradcheck", "init", "losses", "manual_seed", "nn",
    "ops", "optim", "set_device", "to_device", "to_numpy",
]
