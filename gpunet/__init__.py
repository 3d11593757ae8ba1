"""gpunet: a CNN library you can read end to end, on NumPy or CuPy.

The backend names are re-exported here: ``gpunet.set_device("auto")``,
``gpunet.manual_seed(0)``, ``gpunet.to_numpy(x)``.
"""
from . import data, distributed, init, losses, models, nn, ops, optim
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
from .io import CheckpointError, load, save
from .models import summary
from .optim import ewma
from .train import History, NonFiniteError, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "Device", "DeviceError", "DeviceFallbackWarning", "GradcheckReport",
    "History", "NonFiniteError", "data", "distributed", "evaluate", "ewma", "fit",
    "get_array_module",
    "get_device", "gradcheck", "init", "load", "losses", "manual_seed", "models", "nn", "ops",
    "optim", "save", "set_device", "summary", "to_device", "to_numpy",
]
