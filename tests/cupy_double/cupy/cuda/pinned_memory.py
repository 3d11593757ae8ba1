"""``cupy.cuda.pinned_memory`` of the double: host memory is plain NumPy memory."""


class PinnedMemoryPool:
    def free_all_blocks(self):
        pass

    def n_free_blocks(self):
        return 0


default_pool = PinnedMemoryPool()
