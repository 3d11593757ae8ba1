"""``cupy.cuda`` of the double: its devices, which say they are the double.

Streams and events keep CuPy's interface; work runs at once on the CPU, so
synchronising is a no-op and an event records the host clock.
"""
import time as _time

from .. import _core
from . import memory, pinned_memory, runtime  # noqa: F401
from .memory import MemoryPool  # noqa: F401


class Device:
    """``cupy.cuda.Device``: one of ``runtime.getDeviceCount()``; ``use()`` and ``with``
    make it the current device of this thread, where arrays are made and kernels run."""

    def __init__(self, device=None):
        index = _core.current_device() if device is None else int(device)
        if not 0 <= index < runtime.getDeviceCount():
            raise runtime.CUDARuntimeError(101)  # cudaErrorInvalidDevice
        self.id = index
        self._previous = []

    compute_capability = property(lambda self: runtime.COMPUTE_CAPABILITY)
    mem_info = property(lambda self: (memory.default_pool.free_device_bytes(),
                                      runtime.TOTAL_MEMORY))

    def synchronize(self):
        pass

    def use(self):
        _core.set_current_device(self.id)

    def __enter__(self):
        self._previous.append(_core.current_device())
        _core.set_current_device(self.id)
        return self

    def __exit__(self, *exc):
        _core.set_current_device(self._previous.pop())
        return False

    def __int__(self):
        return self.id

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id} (CuPy test double)>"


def get_device_id():
    return _core.current_device()


class Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.ptr = 0 if null else id(self)

    def synchronize(self):
        pass

    def use(self):
        return self

    def record(self, event=None):
        event = event or Event()
        event.record(self)
        return event

    def wait_event(self, event):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


Stream.null = Stream(null=True)


def get_current_stream(device_id=None):
    return Stream.null


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self._time = None
        self.disable_timing = disable_timing

    def record(self, stream=None):
        self._time = _time.perf_counter()

    def synchronize(self):
        pass

    @property
    def done(self):
        return True


def get_elapsed_time(start_event, end_event):
    """Milliseconds between two recorded events (host time: the work ran in between)."""
    if start_event._time is None or end_event._time is None:
        raise runtime.CUDARuntimeError(600)  # cudaErrorNotReady
    return (end_event._time - start_event._time) * 1e3


def is_available():
    return True


_allocator = None  # what set_allocator was last given (``None``: cudaMalloc per array)


def set_allocator(allocator=None):
    """Which allocator CuPy would use; arrays here are NumPy's memory either way."""
    global _allocator
    _allocator = allocator
