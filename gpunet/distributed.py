"""Data-parallel training over processes started by ``mpiexec``, on existing engines:
MPI (``mpi4py``) starts the processes and moves NumPy buffers; NCCL (CuPy's
``cupy.cuda.nccl``) all-reduces CuPy buffers, its unique id broadcast over MPI, with
MPI on host copies where NCCL is missing. gpunet opens no socket of its own.

Every rank holds the whole model and the whole dataset. Each step every rank draws
the same global batch (``batch_size`` rows per rank, the same shuffle, the same
augmentation) and trains on its slice of rows (:meth:`World.shard`); dropout draws
its mask for the global batch and keeps the slice too, so a run on ``p`` processes
takes the steps one process takes with ``p`` times the batch. The gradients are
then averaged over the ranks (:meth:`World.all_reduce_gradients`) and every rank
takes the same optimizer step. Batch norm normalises each rank's slice by its own
statistics (as PyTorch's DDP), and its running statistics are rank 0's from each
epoch's end on; :func:`gpunet.nn.convert_sync_batchnorm` (here also
:func:`sync_batch_norm`) makes it use the statistics of all ranks' rows together instead.

A rank that raises ends the whole job (``MPI_Abort``) after printing its one-line
error: the others would otherwise wait for it in the next collective for ever.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
import zlib

import numpy

from . import _process_group, config
from .backend import batch_shard, current_shard, get_array_module, to_numpy
from .nn.normalization import convert_sync_batchnorm

# batch_shard and current_shard live with the random streams (gpunet.backend), which
# draw dropout's masks by them; they are named here too, where the step sets them.
__all__ = ["World", "init", "world", "is_initialized", "current_shard", "batch_shard",
           "sync_batch_norm", "launched_processes"]

# Gradients and parameters move in buckets of this many bytes per rank: the reduction
# gathers every rank's bucket (p buckets of memory), then sums them in rank order.
BUCKET_BYTES = 16 * 2**20

_world: World | None = None


class DistributedError(RuntimeError):
    """The ranks of a job disagree (models, data), or MPI is missing."""


# What each MPI launcher tells its processes about the job's size: MPICH/Hydra and
# Intel MPI (PMI), Open MPI, MVAPICH2, PMIx. Read without importing mpi4py, which would
# initialise MPI in a process that is not meant to be distributed.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE",
                   "MPI_LOCALNRANKS")


def launched_processes() -> int:
    """How many processes the MPI launcher (``mpiexec -n N``) started for this job, from
    its environment; 1 outside ``mpiexec`` (or where no variable can be read)."""
    sizes = []
    for name in _SIZE_VARIABLES:
        try:
            sizes.append(int(os.environ.get(name, "1")))
        except ValueError:
            continue  # another program's variable of the same name: not a job size
    return max(sizes, default=1)


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(
            "distributed training needs mpi4py and an MPI library: pip install "
            "'gpunet[mpi]' (mpi4py and the mpich wheel, which brings mpiexec)") from exc
    return MPI


class World:
    """The processes of a job: ``rank``, ``size``, ``local_rank`` (rank among the
    processes on this machine) and ``local_size``."""

    def __init__(self, comm):
        mpi = _mpi()
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self._nccl = None  # NcclCommunicator, made at the first reduction of CuPy arrays

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # -- small values --------------------------------------------------------------------
    def sum(self, values) -> list[float]:
        """The sum over ranks of a few numbers (metrics), in rank order."""
        gathered = self.comm.allgather([float(v) for v in values])
        return [float(sum(column)) for column in zip(*gathered)]

    def any(self, flag: bool) -> bool:
        """Whether any rank says so (a stop asked by one rank's callback stops all)."""
        return any(self.comm.allgather(bool(flag)))

    def broadcast_object(self, value, root: int = 0):
        return self.comm.bcast(value, root=root)

    def check_same(self, what: str, description) -> None:
        """Raise :class:`DistributedError` on every rank unless every rank's
        ``description`` (a list of lines) equals rank 0's, naming the first rank that
        differs and its first line that does."""
        everyone = self.comm.allgather(list(description))
        ours = everyone[0]
        for rank, theirs in enumerate(everyone):
            if theirs == ours:
                continue
            for i in range(max(len(ours), len(theirs))):
                a = ours[i] if i < len(ours) else "nothing"
                b = theirs[i] if i < len(theirs) else "nothing"
                if a != b:
                    raise DistributedError(f"the ranks' {what} differ: rank 0 has {a}, "
                                           f"rank {rank} has {b}")

    # -- arrays ----------------------------------------------------------------------------
    def all_reduce_gradients(self, model) -> None:
        """Replace each parameter's ``grad`` by its mean over the ranks, in place. The
        parameters go in the model's order; on MPI each bucket of them is gathered from
        every rank and summed in rank order, so every rank gets the same bits and a
        rerun the same result, whatever algorithm the MPI library picks."""
        self.all_reduce([p.grad for p in model.parameters()], mean=True)

    def broadcast_parameters(self, model, root: int = 0) -> None:
        """Every rank takes rank ``root``'s parameters and buffers (after checking that
        all ranks built the same model: names, shapes and dtypes)."""
        self.check_same("models", [f"{name} {tuple(a.shape)} {a.dtype}"
                                   for name, a in _named_arrays(model)])
        self._broadcast([a for _, a in _named_arrays(model)], root)

    def broadcast_buffers(self, model, root: int = 0) -> None:
        """Rank ``root``'s buffers (batch norm's running statistics) on every rank."""
        self._broadcast([b for _, b in model.named_buffers()], root)

    def all_reduce(self, arrays, mean: bool = False) -> None:
        """Each array replaced, in place, by its sum (or mean) over the ranks: NCCL for
        CuPy arrays where CuPy has it, else gathered over MPI in buckets and summed in
        rank order."""
        arrays = [a for a in arrays if a.size]
        if not arrays or self.size == 1:
            return
        xp = get_array_module(arrays[0])
        if xp is not numpy and self._nccl_communicator() is not None:
            self._nccl_all_reduce(arrays, mean)
            return
        for bucket in _buckets(arrays):
            flat = numpy.concatenate([to_numpy(a).ravel() for a in bucket])
            gathered = numpy.empty((self.size, flat.size), flat.dtype)
            self.comm.Allgather(flat, gathered)
            total = gathered.sum(axis=0)  # rank order, the same on every rank
            if mean:
                total /= self.size
            offset = 0
            for a in bucket:
                a[...] = xp.asarray(total[offset:offset + a.size].reshape(a.shape))
                offset += a.size

    def _broadcast(self, arrays, root) -> None:
        arrays = [a for a in arrays if a.size]
        if not arrays or self.size == 1:
            return
        xp = get_array_module(arrays[0])
        for bucket in _buckets(arrays):
            flat = numpy.concatenate([to_numpy(a).ravel().view(numpy.uint8) for a in bucket])
            self.comm.Bcast(flat, root=root)
            offset = 0
            for a in bucket:
                part = flat[offset:offset + a.nbytes].view(a.dtype).reshape(a.shape)
                a[...] = xp.asarray(part)
                offset += a.nbytes

    # -- NCCL ----------------------------------------------------------------------------
    def _nccl_communicator(self):
        """CuPy's NCCL communicator over these ranks (its id from rank 0 over MPI), or
        ``None`` where CuPy has no NCCL: then host copies go over MPI."""
        if self._nccl is None:
            try:
                from cupy.cuda import nccl
            except ImportError:
                nccl = None
            available = nccl is not None and getattr(nccl, "available", True)
            if not all(self.comm.allgather(bool(available))):
                self._nccl = False
            else:
                uid = self.comm.bcast(nccl.get_unique_id() if self.is_root else None)
                self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        return self._nccl or None

    def _nccl_all_reduce(self, arrays, mean) -> None:
        import cupy
        from cupy.cuda import nccl
        kinds = {numpy.dtype("float32"): nccl.NCCL_FLOAT32,
                 numpy.dtype("float64"): nccl.NCCL_FLOAT64}
        stream = cupy.cuda.get_current_stream()
        for bucket in _buckets(arrays):
            flat = cupy.concatenate([a.ravel() for a in bucket])
            self._nccl.allReduce(flat.data.ptr, flat.data.ptr, flat.size, kinds[flat.dtype],
                                 nccl.NCCL_SUM, stream.ptr)
            if mean:
                flat /= self.size
            offset = 0
            for a in bucket:
                a[...] = flat[offset:offset + a.size].reshape(a.shape)
                offset += a.size

    # -- the batch ---------------------------------------------------------------------------
    def shard(self, rows: int) -> tuple[int, int]:
        """This rank's ``(start, stop)`` of a global batch of ``rows``: equal slices in
        rank order; the ``rows % size`` rows left over are dropped (every rank then
        takes as many rows, so the mean of the ranks' means is the batch's mean)."""
        per_rank = rows // self.size
        return self.rank * per_rank, (self.rank + 1) * per_rank


def _named_arrays(model):
    yield from ((name, p.data) for name, p in model.named_parameters())
    yield from model.named_buffers()


def _buckets(arrays):
    """Consecutive runs of ``arrays`` of one dtype and at most ``BUCKET_BYTES``
    (one larger array alone)."""
    bucket, size = [], 0
    for a in arrays:
        if bucket and (a.dtype != bucket[0].dtype or size + a.nbytes > BUCKET_BYTES):
            yield bucket
            bucket, size = [], 0
        bucket.append(a)
        size += a.nbytes
    if bucket:
        yield bucket


def init() -> World:
    """The job's :class:`World` (MPI is initialised at the first call). Call it before
    building the model: on a CUDA device each rank takes GPU ``local_rank``; on the
    CPU each rank takes its share of the cores for gpunet's threads unless
    ``GPUNET_NUM_THREADS`` says otherwise. From here on, an exception nobody catches
    ends the whole job."""
    global _world
    if _world is None:
        _world = World(_mpi().COMM_WORLD)
        _process_group.set_default(_world)  # what SyncBatchNorm reduces over
        _install_abort_on_error(_world)
        if _world.local_size > 1 and config.get("num_threads") is None:
            from . import cpu
            cpu.set_num_threads(max(1, len(os.sched_getaffinity(0)) // _world.local_size
                                    if hasattr(os, "sched_getaffinity") else 1))
        from . import backend
        if backend.get_device().kind == "cuda" and _world.local_size > 1:
            backend.set_device(f"cuda:{_local_gpu(_world)}")
    return _world


def _local_gpu(w: World) -> int:
    """GPU ``local_rank``; with fewer GPUs than processes on this machine, they share
    them round-robin (slower, and said once)."""
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
    if count < w.local_size and w.local_rank == 0:
        warnings.warn(f"{w.local_size} processes share {count} GPU(s) on this machine",
                      stacklevel=3)
    return w.local_rank % count


def sync_batch_norm(model):
    """``gpunet.nn.convert_sync_batchnorm(model)``: every batch-norm layer of ``model``
    a :class:`gpunet.nn.SyncBatchNorm`, normalising by the statistics of all ranks'
    rows together. Returns the model (a new module only where ``model`` itself is a
    batch norm)."""
    return convert_sync_batchnorm(model)


def world() -> World:
    """The :class:`World` of :func:`init` (raises if it was not called)."""
    if _world is None:
        raise DistributedError("gpunet.distributed.init() has not been called")
    return _world


def is_initialized() -> bool:
    return _world is not None


def abort(message: str, code: int = 1) -> None:
    """Print ``message`` as this rank's one line and end every rank of the job."""
    w = _world
    prefix = f"rank {w.rank}/{w.size}: " if w is not None and w.size > 1 else ""
    _say(f"gpunet: {prefix}{message}")
    if w is not None and w.size > 1:
        _abort_job(w, code)
    raise SystemExit(code)


def _say(line: str) -> None:
    """``line`` on stderr in one write: the ranks' lines must not interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _abort_job(w: World, code: int) -> None:
    # mpiexec forwards a rank's stderr through a pipe it stops reading when the job is
    # aborted: a moment first, so that the line just said reaches the terminal
    time.sleep(0.3)
    w.comm.Abort(code)


def end_interrupted(message: str) -> bool:
    """After an interrupt (Ctrl-C) in a job of several processes: rank 0 says
    ``message`` (what was saved); then, if every rank was interrupted (a Ctrl-C
    reaches them all), each returns and the job ends as a whole; if one was not
    within a few seconds (it waits in a collective for the interrupted one, for
    ever), the job is aborted, another rank saying it was interrupted. Returns
    whether it said ``message`` (``False`` in one process: the caller says it)."""
    w = _world
    if w is None or w.size == 1:
        return False
    if w.is_root:
        _say(message)
    everyone = w.comm.Ibarrier()
    deadline = time.monotonic() + INTERRUPT_GRACE_S
    while not everyone.Test():
        if time.monotonic() > deadline:
            if not w.is_root:
                _say(f"gpunet: rank {w.rank}/{w.size}: interrupted")
            _abort_job(w, 130)
        time.sleep(0.01)
    return True


INTERRUPT_GRACE_S = 3.0


def _install_abort_on_error(w: World) -> None:
    previous = sys.excepthook

    def hook(kind, value, traceback):
        if w.size == 1 or kind in (KeyboardInterrupt, SystemExit):
            previous(kind, value, traceback)
            return
        abort(f"{kind.__name__}: {value}", 1)

    sys.excepthook = hook


def data_description(name: str, data) -> list[str]:
    """Lines that differ when two ranks hold different data: shapes, dtypes and a
    CRC-32 of every byte (once per run: small beside an epoch)."""
    return [f"{name} {part}: shape {tuple(array.shape)}, {array.dtype}, "
            f"crc {zlib.crc32(numpy.ascontiguousarray(to_numpy(array))):08x}"
            for part, array in zip(("x", "y"), data)]
