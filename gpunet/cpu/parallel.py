"""CPU threads: gpunet splits an op's batch over the cores itself.

NumPy runs every call on one core except BLAS, which OpenBLAS spreads over its
own threads. Copies, pooling and Winograd's transforms thus used one of the
cores, and OpenBLAS synchronises its threads on every one of the many small
GEMMs a convolution makes. PyTorch threads every op, and its steps gain from a
second core (bench/results/cpu-choices-2026-11.md). So on NumPy, gpunet's
convolution, pooling, batch-norm and linear layers hand batch chunks to one
thread per core (:func:`forward_in_chunks` and the backward of its
:class:`Chunked`, :func:`matmul`, :func:`map_chunks`); NumPy releases the GIL
inside each call.

Their GEMMs must then run single-threaded. Two threads calling a multi-threaded
OpenBLAS at once ran at half the speed of one, and after a multi-threaded call
OpenBLAS's idle workers keep spinning for a while, on the core a chunk needs.
So while gpunet works (:func:`single_threaded_blas`) BLAS is limited to one
thread through threadpoolctl, and given its thread count back on the way out.
Without threadpoolctl, or with a BLAS it cannot control, gpunet keeps to one
thread and leaves BLAS alone.

``GPUNET_NUM_THREADS`` or :func:`set_num_threads` sets the number of threads;
the default is the number of cores this process may run on.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy

from .. import _checks, config
from .._context import Context
from ..backend import get_array_module

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # an optional dependency: without it gpunet stays on one thread
    ThreadpoolController = None

__all__ = ["num_threads", "set_num_threads", "single_threaded_blas", "map_chunks",
           "batch_slices", "Chunked", "forward_in_chunks", "matmul"]

# A chunk is worth a thread from about this much work: handing it over costs two
# thread wake-ups, the time of tens of thousands of elements of a copy or pooling
# pass. LeNet-5's first pooling (602,112 inputs at batch 128) gains from two
# chunks, its second (204,800) does not, nor do its fully connected layers
# (bench/results/cpu-choices-2026-11.md).
MIN_WORK_PER_CHUNK = 2**17
# A multiply-add inside a GEMM costs about this fraction of an element pass.
GEMM_MACS_PER_WORK = 32
# A worker starts its chunk after the calling thread starts its own (it has to be
# woken), so the calling thread's chunk is larger by about this much work and each
# worker's smaller: they finish closer together, where the caller waited for the
# worker at each of LeNet-5's split passes. Of 2**14..2**17, 2**16 made paired
# LeNet-5 steps fastest (bench/results/cpu-choices-2026-11.md).
WORKER_START_WORK = 2**16


def _default_threads() -> int:
    given = config.get("num_threads")
    if given is not None:
        return given
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class _State:
    """The thread count, the worker pool and the BLAS limit, shared by all callers."""

    def __init__(self):
        self.lock = threading.Lock()
        self._requested: int | None = None  # GPUNET_NUM_THREADS is read on first use
        self.workers: ThreadPoolExecutor | None = None
        self.blas = None  # threadpoolctl's controllers of the BLAS libraries, once looked up
        self.depth = 0  # nesting of single_threaded_blas()
        self.saved_limits: list[int] = []
        self.local = threading.local()  # .in_worker, .splitting: nested splits run inline

    def blas_controllers(self):
        if self.blas is None:
            self.blas = (ThreadpoolController().select(user_api="blas").lib_controllers
                         if ThreadpoolController is not None else [])
        return self.blas

    @property
    def requested(self) -> int:
        # Not read at import: a bad GPUNET_NUM_THREADS then breaks only what uses
        # threads, with the one-line error the CLI prints (check_environment).
        if self._requested is None:
            self._requested = _default_threads()
        return self._requested

    @requested.setter
    def requested(self, n: int) -> None:
        self._requested = n


_state = _State()


def _forget_workers_after_fork():
    # A forked child has the pool's bookkeeping but not its threads.
    _state.workers = None
    _state.lock = threading.Lock()
    _state.depth = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers_after_fork)


def num_threads() -> int:
    """Threads gpunet's CPU ops use: the requested number, or 1 when BLAS cannot be
    limited to one thread (threadpoolctl missing, or a BLAS it does not know)."""
    return _state.requested if _state.blas_controllers() else 1


def set_num_threads(n: int) -> None:
    """Use ``n`` threads from now on (``GPUNET_NUM_THREADS`` sets the default)."""
    n = _checks.positive_int("n", n)
    with _state.lock:
        _state.requested = n
        if _state.workers is not None:
            _state.workers.shutdown(wait=True)
            _state.workers = None


class _SingleThreadedBlas:
    """The context manager :func:`single_threaded_blas` returns. A class, not a
    ``contextlib`` generator: a training step enters one per split op, and this
    costs a quarter as much."""

    __slots__ = ()

    def __enter__(self):
        controllers = _state.blas_controllers()
        with _state.lock:
            if _state.depth == 0:
                _state.saved_limits = [c.num_threads for c in controllers]
                for c in controllers:
                    c.set_num_threads(1)
            _state.depth += 1

    def __exit__(self, *exc_info):
        with _state.lock:
            _state.depth -= 1
            if _state.depth == 0:
                for c, limit in zip(_state.blas_controllers(), _state.saved_limits):
                    c.set_num_threads(limit)


def single_threaded_blas() -> _SingleThreadedBlas:
    """BLAS limited to one thread inside; the outermost exit restores its count."""
    return _SingleThreadedBlas()


def _workers() -> ThreadPoolExecutor:
    with _state.lock:
        if _state.workers is None:
            _state.workers = ThreadPoolExecutor(_state.requested - 1,
                                                thread_name_prefix="gpunet-cpu",
                                                initializer=_mark_worker)
        return _state.workers


def _mark_worker():
    _state.local.in_worker = True


def map_chunks(task, chunks: list) -> list:
    """``[task(chunk) for chunk in chunks]``, the chunks run at once on gpunet's
    threads (the first on the calling thread), BLAS single-threaded meanwhile.
    An exception in any chunk is raised here, after all chunks have finished."""
    with single_threaded_blas():
        # inside another split (on a worker, or in the caller's own chunk) the
        # threads are taken: the chunks run here, one after the other
        if (len(chunks) == 1 or _state.requested == 1
                or getattr(_state.local, "in_worker", False)
                or getattr(_state.local, "splitting", False)):
            return [task(chunk) for chunk in chunks]
        pending = [_workers().submit(task, chunk) for chunk in chunks[1:]]
        _state.local.splitting = True
        try:
            first = task(chunks[0])
        finally:  # never leave a chunk running on memory the caller may free
            _state.local.splitting = False
            done = [future.exception() for future in pending]
        for error in done:
            if error is not None:
                raise error
        return [first] + [future.result() for future in pending]


def batch_slices(batch: int, work: int, min_rows: int = 1) -> list[slice]:
    """At most :func:`num_threads` slices of ``range(batch)``, each with at least
    ``min_rows`` rows and ``MIN_WORK_PER_CHUNK`` of the ``work`` (elements passed
    over, or GEMM multiply-adds / ``GEMM_MACS_PER_WORK``). The slices are equal
    but for the first, the calling thread's, which is ``WORKER_START_WORK`` of
    work larger than the others (at most by a quarter of theirs)."""
    count = max(1, min(num_threads(), batch // min_rows, work // MIN_WORK_PER_CHUNK))
    if count == 1:
        return [slice(0, batch)]
    lead = min(WORKER_START_WORK * batch // work, batch // (4 * count))
    size = max(min_rows, (batch - lead) // count)  # each worker's rows
    first = batch - size * (count - 1)
    return [slice(0, first)] + [slice(start, start + size) for start in range(first, batch, size)]


class Chunked(Context):
    """The contexts of an op that ran on batch chunks, and the chunks' slices: its
    backward runs each chunk's on the same threads, joins ``dx`` along the batch
    and sums the parameter gradients."""

    __slots__ = ("slices", "contexts", "in_shape")

    def __init__(self, op, slices, contexts, out_shape, in_shape):
        super().__init__(op, out_shape)
        self.slices, self.contexts, self.in_shape = slices, contexts, tuple(in_shape)

    def _backward(self, dy, input_grad):
        if len(self.slices) == 1:
            return map_chunks(lambda _: self.contexts[0]._backward(dy, input_grad),
                              self.slices)[0]
        dx = numpy.empty(self.in_shape, dy.dtype) if input_grad else None

        def chunk(i):
            rows = self.slices[i]
            dx_part, *grads = self.contexts[i]._backward(dy[rows], input_grad)
            if input_grad:
                dx[rows] = dx_part  # by the thread that made it, while it is in cache
            return grads

        parts = map_chunks(chunk, list(range(len(self.slices))))
        return (dx, *(None if g[0] is None else sum(g[1:], g[0]) for g in zip(*parts)))


def forward_in_chunks(op: str, forward, x, work: int, out_shape, min_rows: int = 1):
    """``forward(x) -> (y, ctx)`` run on batch chunks of the NumPy array ``x``
    (``work`` in all and ``min_rows`` at least per chunk, as :func:`batch_slices`
    counts them), ``y`` being ``out_shape`` for the whole batch. Returns ``y`` and
    a :class:`Chunked` (with one chunk when ``x`` is too small to split: its
    backward, too, must run with single-threaded BLAS)."""
    slices = batch_slices(x.shape[0], work, min_rows)
    if len(slices) == 1:
        [(y, ctx)] = map_chunks(lambda _: forward(x), slices)
        return y, Chunked(op, slices, [ctx], y.shape, x.shape)
    y = numpy.empty(out_shape, x.dtype)

    def chunk(rows):
        y_part, ctx = forward(x[rows])
        y[rows] = y_part  # by the thread that made it, while it is in cache
        return ctx

    return y, Chunked(op, slices, map_chunks(chunk, slices), out_shape, x.shape)


def matmul(a, b, out=None):
    """``a @ b`` (``numpy.matmul``, into ``out`` if given); on NumPy split over
    gpunet's threads along the result's first axis: the rows of a 2-D ``a``, or
    the batch of a batched product (Winograd's tile positions), when the op
    around it did not split its batch already."""
    if not isinstance(a, numpy.ndarray):
        return get_array_module(a).matmul(a, b, out=out)
    if out is None:
        # (broadcast_shapes costs as much as a small GEMM: plain products skip it)
        batch = () if a.ndim == b.ndim == 2 else numpy.broadcast_shapes(a.shape[:-2],
                                                                          b.shape[:-2])
        out = numpy.empty((*batch, a.shape[-2], b.shape[-1]), numpy.result_type(a, b))
    batched = out.ndim > 2

    def part(rows):
        a_part = a[rows] if a.ndim == out.ndim else a
        b_part = b[rows] if batched and b.ndim == out.ndim else b
        numpy.matmul(a_part, b_part, out=out[rows])

    multiply_adds = out.size * a.shape[-1]
    map_chunks(part, batch_slices(out.shape[0], multiply_adds // GEMM_MACS_PER_WORK))
    return out
