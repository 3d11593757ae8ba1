"""``cupy.random`` of the double: NumPy's generators underneath, device arrays out.

The streams differ from CuPy's (its default bit generator is XORWOW): a test may
rely on a seed repeating a stream, never on the values themselves.
"""
import numpy as _numpy

from .. import _core, _manifest
from .._core import call_numpy as _call_numpy
from .._core import populate as _populate

_STATE_BYTES = 48  # sizeof(curandState), the real XORWOW's bytes per state


class XORWOW:
    """``cupy.random.XORWOW(seed=None, *, size=-1)``. As in CuPy, the stream's
    position lives in device memory, the int8 array ``_state`` (``size`` states of
    48 bytes): whoever copies it out and back resumes the stream. The double keeps a
    PCG64 state in its first bytes, read before each draw and written after."""

    def __init__(self, seed=None, *, size=-1):
        _manifest.check_call("cupy.random", "XORWOW", (seed,), {"size": size})
        from .._core import ndarray
        size = 8 * 256 * 16 if size < 0 else size  # CuPy's default (16: the attribute's id)
        self._size = size
        self._current_device_id = _core.current_device()
        self._state = ndarray._from_numpy(_numpy.zeros(size * _STATE_BYTES, _numpy.int8))
        self._store(_numpy.random.PCG64(seed))

    def _store(self, bits) -> None:
        state = bits.state
        words = [state["state"]["state"], state["state"]["inc"]]
        raw = b"".join(w.to_bytes(16, "little") for w in words)
        raw += _numpy.array([state["has_uint32"], state["uinteger"]], "<u8").tobytes()
        self._state._a[:len(raw)] = _numpy.frombuffer(raw, _numpy.int8)

    def _load(self):
        raw = self._state._a[:48].tobytes()
        bits = _numpy.random.PCG64()
        has_uint32, uinteger = _numpy.frombuffer(raw[32:48], "<u8")
        bits.state = {"bit_generator": "PCG64",
                      "state": {"state": int.from_bytes(raw[:16], "little"),
                                "inc": int.from_bytes(raw[16:32], "little")},
                      "has_uint32": int(has_uint32), "uinteger": int(uinteger)}
        return bits

    def _state_size(self):
        return self._size

    def _type_size(self):
        return _STATE_BYTES


class Generator:
    """``cupy.random.Generator``: only the methods the real one has. Each draw
    continues from the bit generator's state in device memory."""

    def __init__(self, bit_generator):
        if not isinstance(bit_generator, XORWOW):
            raise TypeError("cupy.random.Generator: the double models XORWOW bit generators "
                            f"only, got {type(bit_generator).__name__}")
        self._bits = bit_generator

    def __getattr__(self, name):
        if name.startswith("_") or not _manifest.offered("cupy.random.Generator", name):
            raise AttributeError(f"'cupy.random.Generator' object has no attribute {name!r}")

        def call(*args, **kwargs):
            _manifest.check_call("cupy.random.Generator", name, args, kwargs)
            if _core.current_device() != self._bits._current_device_id:
                raise RuntimeError("This Generator state is allocated in a different device")
            bits = self._bits._load()
            method = getattr(_numpy.random.Generator(bits), name)
            result = _call_numpy(f"cupy.random.Generator.{name}", method, args, kwargs)
            self._bits._store(bits)
            return result
        return call


def default_rng(seed=None):
    return Generator(XORWOW(seed))


_populate("cupy.random", globals(), _numpy.random)
