"""How ``fit`` runs on the processes of its job: :class:`OneProcess` alone, or
:class:`DataParallel` over the processes ``mpiexec`` started (:mod:`gpunet.distributed`).

Everything ``fit`` does differently in a distributed run is here: which rows of each
global batch this process trains on, the batch's metrics summed over the processes,
whether any process's callbacks asked to stop, rank 0's batch-norm statistics for
everyone after an epoch, and which process shows progress and writes files.
"""
from __future__ import annotations

from .backend import get_rng_state, set_rng_state


class OneProcess:
    """``fit`` on this process alone: every row of a batch is its own."""

    world = None  # what train_step and evaluate take: no gradients or sums to combine
    size = 1
    is_root = True  # shows progress, writes files

    def shard(self, rows: int) -> tuple[int, int]:
        return 0, rows

    def batch_metrics(self, loss: float, correct: int, seen: int) -> tuple[float, int, int]:
        return loss, correct, seen

    def any(self, flag: bool) -> bool:
        return flag

    def end_epoch(self, model) -> None:
        return None


class DataParallel:
    """``fit`` over the job's processes, after checking that every rank has the same
    model and data and giving everyone rank 0's parameters and random state (the
    same shuffles and dropout masks on every rank); each trains on its slice of the
    global batch, the gradients averaged in ``train_step``."""

    def __init__(self, model, train_data, val_data):
        from . import distributed
        world = distributed.init()
        world.check_same("training data", distributed.data_description("train_data",
                                                                       train_data))
        if val_data is not None:
            world.check_same("validation data", distributed.data_description("val_data",
                                                                             val_data))
        world.broadcast_parameters(model)
        state = world.broadcast_object(get_rng_state())
        if not world.is_root and state != get_rng_state():
            set_rng_state(state)
        self.world, self.size, self.is_root = world, world.size, world.is_root

    def shard(self, rows: int) -> tuple[int, int]:
        """This process's rows ``[start, stop)`` of a global batch of ``rows``."""
        return self.world.shard(rows)

    def batch_metrics(self, loss: float, correct: int, seen: int) -> tuple[float, int, int]:
        """The mean loss, correct predictions and rows of the global batch."""
        loss_sum, correct, seen = self.world.sum([loss * seen, correct, seen])
        return loss_sum / seen, int(correct), int(seen)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (a callback asking to stop)."""
        return self.world.any(flag)

    def end_epoch(self, model) -> None:
        """Rank 0's running statistics for everyone (as DDP)."""
        self.world.broadcast_buffers(model)


def processes_for(distributed: bool, model, train_data, val_data):
    """The processes ``fit`` trains on: all of the MPI job's, or this one."""
    return DataParallel(model, train_data, val_data) if distributed else OneProcess()
