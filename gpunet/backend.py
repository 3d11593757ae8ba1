"""Devices and array modules: the only place in gpunet that imports CuPy.

Everything else takes its array module ``xp`` from the arrays it is given
(:func:`get_array_module`), so one implementation serves NumPy and CuPy.
"""
from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import os
import platform
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType

import numpy

from . import config

try:  # CuPy is optional; a broken install counts as missing, with its reason.
    import cupy as _cupy

    _CUPY_IMPORT_ERROR: str | None = None
except ModuleNotFoundError as exc:
    _cupy = None
    _CUPY_IMPORT_ERROR = None if exc.name == "cupy" else f"{type(exc).__name__}: {exc}"
except Exception as exc:  # noqa: BLE001 - a broken install also means "no CuPy"
    _cupy = None
    _CUPY_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = [
    "Device", "DeviceError", "DeviceFallbackWarning", "set_device", "get_device",
    "get_array_module", "common_array_module", "to_device", "to_numpy",
    "manual_seed", "generator", "get_rng_state", "set_rng_state", "cuda_unavailable_reason",
    "resolve_device", "device_of", "is_out_of_memory", "release_cached_memory",
    "keep_freed_cpu_memory", "tune_cpu_allocator", "device_name", "NO_GPU", "device_scope",
]


class DeviceError(RuntimeError):
    """A requested device cannot be used; the message says why."""


class DeviceFallbackWarning(RuntimeWarning):
    """``"auto"`` chose the CPU because CUDA is not usable."""


@dataclass(frozen=True)
class Device:
    """A place where arrays live: ``Device("cpu")`` or ``Device("cuda", 0)``."""

    kind: str
    index: int = 0

    @property
    def name(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    @property
    def xp(self) -> ModuleType:
        return numpy if self.kind == "cpu" else _cupy

    def synchronize(self) -> None:
        """Wait for queued GPU work (a no-op on the CPU); benchmarks need it."""
        if self.kind == "cuda":
            with _cupy.cuda.Device(self.index):
                _cupy.cuda.get_current_stream().synchronize()

    def __str__(self) -> str:
        return self.name


CPU = Device("cpu")


def _parse(spec: str | Device) -> Device | None:
    """``Device`` for a spec, or ``None`` for ``"auto"``; ``ValueError`` if malformed."""
    if isinstance(spec, Device):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"device: expected a str or Device, got {type(spec).__name__}")
    text = spec.strip().lower()
    if text == "auto":
        return None
    if text == "cpu":
        return CPU
    if text == "cuda":  # the current GPU, as torch.device("cuda"): a rank's own
        return _current if _current is not None and _current.kind == "cuda" \
            else Device("cuda", 0)
    if text.startswith("cuda:") and text[5:].isdigit():
        return Device("cuda", int(text[5:]))
    raise ValueError(
        f"device: expected 'cpu', 'cuda', 'cuda:N' or 'auto', got {spec!r}")


NO_GPU = "no NVIDIA GPU or driver was found on this machine"


def _gpu_device_files() -> list[str]:
    """The files a GPU driver puts in /dev: /dev/nvidia* on Linux, /dev/dxg under WSL."""
    try:
        return [name for name in os.listdir("/dev") if name.startswith("nvidia")
                or name == "dxg"]
    except OSError:
        return []


def cuda_unavailable_reason(index: int = 0) -> str | None:
    """Why ``cuda:index`` cannot be used, or ``None`` when it can."""
    if _cupy is None:
        if _CUPY_IMPORT_ERROR:
            return f"CuPy failed to import ({_CUPY_IMPORT_ERROR})"
        return "CuPy is not installed (pip install 'gpunet[cuda13]' or 'gpunet[cuda12]')"
    try:
        count = _cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError, missing libcuda, ...
        if not _gpu_device_files():
            # CuPy's own words ("driver version is insufficient") would send the user
            # of a CPU-only machine after a driver upgrade
            return NO_GPU
        return f"the CUDA driver is not usable ({exc})"
    if count == 0:
        return "no CUDA device was found"
    if index >= count:
        return f"cuda:{index} was requested but only {count} CUDA device(s) exist"
    return None


def device_name(device: str | Device) -> str:
    """What the hardware calls itself: the GPU's name from its driver (a stand-in
    such as the tests' CuPy double says so here), or the CPU's."""
    device = resolve_device(device)
    if device.kind == "cpu":
        return platform.processor() or platform.machine()
    return _cupy.cuda.runtime.getDeviceProperties(device.index)["name"].decode()


def resolve_device(spec: str | Device) -> Device:
    """The ``Device`` for a spec, checking that CUDA is usable (``"auto"`` may fall back)."""
    device = _parse(spec)
    if device is None:
        reason = cuda_unavailable_reason(0)
        if reason is None:
            return Device("cuda", 0)
        warnings.warn(f"using the CPU because {reason}", DeviceFallbackWarning,
                      stacklevel=_caller_outside_package())
        return CPU
    if device.kind == "cuda":
        reason = cuda_unavailable_reason(device.index)
        if reason is not None:
            raise DeviceError(f"cannot use {device.name}: {reason}")
    return device


def _caller_outside_package() -> int:
    """The ``stacklevel`` of the first frame outside gpunet, so that a warning
    points at the user's line rather than ours."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _device_at_import() -> str | ValueError:
    # API.md: GPUNET_DEVICE is read once, at import; it is resolved on first use, so
    # that ``import gpunet`` never touches a GPU driver, and a bad value is raised
    # there too, not from ``import gpunet``
    try:
        return config.get("device")
    except ValueError as exc:
        return exc


_ENV_SPEC = _device_at_import()
_current: Device | None = None


def set_device(spec: str | Device) -> Device:
    """Make ``spec`` ("cpu", "cuda", "cuda:N", "auto") the current device and return it.

    Only ``"auto"`` falls back to the CPU (warning why); ``"cuda"`` without a
    usable GPU raises :class:`DeviceError`.
    """
    global _current
    _current = resolve_device(spec)
    if _current.kind == "cuda":
        # CuPy's current device is where new arrays, kernels and caches land: biases,
        # gradients and kernel outputs made with xp.* go to this GPU too, not GPU 0
        _cupy.cuda.Device(_current.index).use()
    return _current


def device_scope(x):
    """``with device_scope(x):`` makes the GPU that holds ``x`` CuPy's current device
    (a model trained on ``cuda:1`` when another device was set since); nothing for
    NumPy arrays."""
    return x.device if _is_cupy_array(x) else contextlib.nullcontext()


def get_device() -> Device:
    """The current device (``$GPUNET_DEVICE`` or ``"auto"`` until set)."""
    if _current is None:
        if isinstance(_ENV_SPEC, ValueError):
            raise ValueError(str(_ENV_SPEC))
        return set_device(_ENV_SPEC)
    return _current


def _is_cupy_array(x) -> bool:
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def get_array_module(*arrays) -> ModuleType:
    """``cupy`` if any argument is a CuPy array, else ``numpy``."""
    return _cupy if any(_is_cupy_array(a) for a in arrays) else numpy


def device_of(x) -> Device:
    """The device an array lives on."""
    return Device("cuda", x.device.id) if _is_cupy_array(x) else CPU


def common_array_module(**named) -> ModuleType:
    """The array module shared by the named arrays (``None`` values are skipped).

    Raises ``TypeError`` naming both sides when CPU and GPU arrays are mixed.
    """
    first_name, first_device = None, None
    for name, array in named.items():
        if array is None:
            continue
        device = device_of(array)
        if first_device is None:
            first_name, first_device = name, device
        elif device != first_device:
            raise TypeError(
                f"{first_name} is on {first_device} but {name} is on {device}: "
                "move them to one device (gpunet.to_device or Module.to)")
    return CPU.xp if first_device is None else first_device.xp


def to_device(x, device: str | Device):
    """``x`` as an array on ``device`` (no copy when it is already there)."""
    target = resolve_device(device)
    if target.kind == "cpu":
        return to_numpy(x)
    if target.kind == "cuda" and _cupy is None:
        raise DeviceError(f"cannot use {target.name}: {cuda_unavailable_reason()}")
    with _cupy.cuda.Device(target.index):
        return _cupy.asarray(x)


def to_numpy(x) -> numpy.ndarray:
    """``x`` as a NumPy array (copies GPU arrays to the host)."""
    if _is_cupy_array(x):
        return x.get()
    return numpy.asarray(x)


# Randomness: one seeded generator per array module, so that a seed fixes
# initialisation, dropout masks and shuffling on both backends.
_seed: int | None = None
_generators: dict = {}


def manual_seed(seed: int) -> None:
    """Seed every random stream gpunet uses (initialisation, dropout, shuffling)."""
    global _seed, _restored_device_state
    if not isinstance(seed, (int, numpy.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"manual_seed: expected a non-negative int, got {seed!r}")
    _seed = int(seed)
    _generators.clear()
    _device_bits.clear()
    _restored_device_state = None


def generator(xp: ModuleType = numpy):
    """The generator for ``xp`` (``numpy.random.Generator`` or CuPy's), seeded by
    :func:`manual_seed` or, before any call to it, from fresh OS entropy."""
    global _seed
    if _seed is None:
        _seed = int(numpy.random.SeedSequence().entropy % 2**63)
    key = _generator_key(xp)
    if key not in _generators:
        if xp is numpy:
            _generators[key] = numpy.random.default_rng(_seed)
        else:  # the bit generator is kept: its state, in device memory, goes in checkpoints
            bits = xp.random.XORWOW(_seed, size=DEVICE_STREAM_STATES)
            _generators[key] = xp.random.Generator(bits)
            _device_bits[key] = bits
            if _restored_device_state is not None:
                _set_device_stream_state(key, _restored_device_state)
    return _generators[key]


def _generator_key(xp):
    """NumPy, or CuPy's current device: a device generator's state lives on its GPU."""
    return xp if xp is numpy else (xp, xp.cuda.get_device_id())


# curand states of the device generator: the draws run on this many threads, and a
# checkpoint holds their bytes (48 each; CuPy's default would be 1.5 MB)
DEVICE_STREAM_STATES = 16384
_device_bits: dict = {}
# a checkpoint's device stream, applied when the device generator is made (the GPU is
# touched only when a draw needs it, and a CPU run keeps the state for its checkpoints)
_restored_device_state: str | None = None


def _device_stream_state(key) -> str:
    """The device generator's state (CuPy keeps it in ``XORWOW._state``), base64."""
    return base64.b64encode(to_numpy(_device_bits[key]._state).tobytes()).decode()


def _set_device_stream_state(key, text: str) -> None:
    raw = numpy.frombuffer(base64.b64decode(text), numpy.int8)
    state = _device_bits[key]._state
    if raw.size != state.size:
        raise ValueError(f"device generator state: expected {state.size} bytes, got {raw.size}")
    state[...] = key[0].asarray(raw)


def get_rng_state() -> dict:
    """The seed and the generators' positions, the CPU's and the GPU's (once it has
    drawn: dropout masks), JSON-serialisable (for checkpoints)."""
    state = {"seed": _seed, "numpy": generator(numpy).bit_generator.state}
    device_key = _generator_key(_cupy) if _cupy is not None and _device_bits else None
    if device_key in _device_bits:
        state["cuda"] = _device_stream_state(device_key)
    elif _restored_device_state is not None:
        state["cuda"] = _restored_device_state
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`get_rng_state`'s result: every stream continues where it was
    (a GPU stream saved before its first draw restarts from the seed)."""
    global _seed, _restored_device_state
    if not isinstance(state.get("cuda", ""), str):
        raise ValueError(f"device generator state: expected base64 text, got "
                         f"{type(state['cuda']).__name__}")
    _seed = int(state["seed"])
    _generators.clear()
    _device_bits.clear()
    generator(numpy).bit_generator.state = state["numpy"]
    _restored_device_state = state.get("cuda")


# A distributed step's rows of the global batch (set by gpunet.distributed): a batch's draws
# (dropout's masks) are the global batch's, sliced, so p processes draw what one process does.
_shard: tuple[int, int, int] | None = None


def current_shard() -> tuple[int, int, int] | None:
    """``(start, stop, global_rows)`` of the global batch this process trains on now, or
    ``None`` outside a distributed step."""
    return _shard


@contextlib.contextmanager
def batch_shard(start: int, stop: int, rows: int):
    """``with batch_shard(start, stop, rows):`` marks a step's slice of a global batch
    of ``rows`` (:func:`batch_uniform` draws for all of them and keeps the slice)."""
    global _shard
    previous, _shard = _shard, (start, stop, rows)
    try:
        yield
    finally:
        _shard = previous


def batch_uniform(xp: ModuleType, shape, dtype):
    """Uniform draws in ``[0, 1)`` for a batch of ``shape`` (rows on axis 0) from
    :func:`generator`: inside :class:`batch_shard` with ``shape[0]`` its slice's rows,
    the global batch's draws and that slice of them; otherwise ``shape``'s own."""
    if _shard is not None and shape[0] == _shard[1] - _shard[0]:
        start, stop, rows = _shard
        return generator(xp).random((rows, *shape[1:]), dtype=dtype)[start:stop]
    return generator(xp).random(shape, dtype=dtype)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is CuPy's GPU out-of-memory error."""
    return _cupy is not None and isinstance(exc, _cupy.cuda.memory.OutOfMemoryError)


def release_cached_memory() -> None:
    """Give cached blocks back: CuPy's pool, and the freed memory glibc keeps for
    reuse on the CPU (see :func:`keep_freed_cpu_memory`)."""
    if _cupy is not None and cuda_unavailable_reason() is None:
        _cupy.get_default_memory_pool().free_all_blocks()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# The largest mmap threshold glibc accepts on 64-bit systems; bigger blocks
# (VGG-16 activations at batch 64 and up) still go to the OS and back.
_CPU_MMAP_THRESHOLD = 32 * 2**20
CPU_KEEP_FREED_BYTES = 1 * 2**30


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (not musl)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_cpu_memory() -> bool:
    """Let glibc keep freed memory for the next allocation instead of returning
    it to the operating system at once; returns whether it applied (Linux with
    glibc only). :func:`tune_cpu_allocator` calls it unless the environment says
    ``GPUNET_KEEP_FREED_MEMORY=0``.

    Why: a training step frees and then allocates again the same activations,
    im2col buffers and gradients. By default glibc unmaps every freed block over
    128 KiB (growing that limit only as it sees blocks freed) and trims the top
    of its heap, so the next step pays one page fault per 4 KiB it touches again,
    thousands a LeNet-5 step and a large part of its time on the CPU
    (bench/results/cpu-choices-2026-11.md). Fixed thresholds, as with ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_``, make glibc reuse them: the same role as CuPy's
    memory pool on the GPU. Peak memory is unchanged; the freed memory stays with
    the process until :func:`release_cached_memory` (``malloc_trim``) or exit.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _CPU_MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, CPU_KEEP_FREED_BYTES))


def tune_cpu_allocator() -> bool:
    """:func:`keep_freed_cpu_memory` unless ``GPUNET_KEEP_FREED_MEMORY=0``; returns
    whether it applied. ``fit``, ``gpunet bench``'s runners and the CLI call it:
    glibc's settings belong to the program, so importing gpunet leaves them alone."""
    return config.get("keep_freed_memory") and keep_freed_cpu_memory()
