"""The run recipe: a training run as library code.

:class:`RunConfig` holds ``gpunet train``'s flags (their defaults and checks);
:func:`run_training` runs one and returns a :class:`RunResult`. ``gpunet train`` maps
its flags to a RunConfig and prints; ``gpunet tune``'s trials are RunConfigs.
"""
from .run_config import RunConfig, RunConfigError, run_defaults, train_command
from .training import RunResult, RunStatus, run_training

__all__ = ["RunConfig", "RunConfigError", "RunResult", "RunStatus", "run_defaults",
           "run_training", "train_command"]
