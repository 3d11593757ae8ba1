"""``cupy.cuda.memory`` of the double: the pool counts the bytes of live arrays, and
holds freed ones until ``free_all_blocks`` as CuPy's pool does (``total_bytes`` is
then the most used since, ``free_bytes`` the cached rest)."""
from .._core import _Memory


class OutOfMemoryError(MemoryError):
    def __init__(self, size, total, limit=0):
        self.size, self.total, self.limit = size, total, limit
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: "
                         f"{total:,} bytes, limit set to: {limit:,} bytes) (CuPy test double)")


class MemoryPool:
    def used_bytes(self):
        return _Memory.used

    def total_bytes(self):
        return max(_Memory.held, _Memory.used)

    def free_bytes(self):
        return self.total_bytes() - _Memory.used

    def free_all_blocks(self, stream=None):
        _Memory.held = _Memory.used

    def n_free_blocks(self):
        return 0

    def set_limit(self, size=None, fraction=None):
        from .runtime import TOTAL_MEMORY
        if fraction is not None:
            size = int(TOTAL_MEMORY * fraction)
        _Memory.limit = TOTAL_MEMORY if not size else min(int(size), TOTAL_MEMORY)

    def get_limit(self):
        return _Memory.limit

    def free_device_bytes(self):
        return _Memory.limit - _Memory.used


default_pool = MemoryPool()
