"""gpunet: a CNN library you can read end to end, on NumPy or CuPy.

The backend names are re-exported here: ``gpunet.set_device("auto")``,
``gpunet.manual_seed(0)``, ``gpunet.to_numpy(x)``.
"""
from . import config, data, distributed, init, losses, models, nn, ops, optim
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


def __getattr__(name):
    # gpunet.tune on first use (as the README writes it), not at import: it is the one
    # module that wants Optuna, and ``import gpunet`` must not import that
    if name == "tune":
        import importlib
        return importlib.import_module(".tune", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "CheckpointError", "Device", "DeviceError", "DeviceFallbackWarning", "GradcheckReport",
    "History", "NonFiniteError", "config", "data", "distributed", "evaluate", "ewma", "fit",
    "get_array_module",
    "get_device", "gradcheck", "init", "load", "losses", "manual_seed", "models", "nn", "ops",
    "optim", "save", "set_device", "summary", "to_device", "to_numpy",
]
