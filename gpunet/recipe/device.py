"""The device a run (or any gpunet command) works on: ``device``, else
``$GPUNET_DEVICE``, else ``auto``."""
from __future__ import annotations

import os
import warnings

from .. import backend, config
from ..data.datasets import cache_dir
from .run_config import RunConfigError


def use_device(spec, quiet: bool = False) -> None:
    """``--device``, else ``$GPUNET_DEVICE``, else ``auto``; a bad value names its source.
    Where nobody asked for a device (``auto``) and the machine has no GPU at all, the
    CPU is no surprise: that is said once (a note in gpunet's cache), not on every
    command; any other reason for the fallback is said every time."""
    source = "--device"
    if spec is None:
        spec, source = config.get("device"), "GPUNET_DEVICE"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", backend.DeviceFallbackWarning)
            backend.set_device(spec)
    except ValueError as exc:
        raise RunConfigError(f"{source}: {str(exc).removeprefix('device: ')}") from None
    except backend.DeviceError as exc:
        given = f"GPUNET_DEVICE={spec}" if source == "GPUNET_DEVICE" else f"--device {spec}"
        raise backend.DeviceError(f"{given}: {exc}") from None
    for warning in caught:
        no_gpu = source == "GPUNET_DEVICE" and backend.NO_GPU in str(warning.message)
        if not quiet and not (no_gpu and _said_before("no-gpu")):
            warnings.warn(warning.message, stacklevel=2)


def _said_before(note: str) -> bool:
    """Whether ``note`` was said on this machine before; records it if not (and says
    ``False`` where the cache cannot be written, so that it is said again)."""
    path = os.path.join(cache_dir(), "notes", note)
    if os.path.exists(path):
        return True
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as file:
            file.write("said\n")
    except OSError:
        pass
    return False
