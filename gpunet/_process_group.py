"""The process group that synchronised layers (:class:`gpunet.nn.SyncBatchNorm`) reduce
over when none is given them: :func:`gpunet.distributed.init` registers its world here,
so that ``nn`` reaches the collectives without importing ``distributed``.

A process group is any object with ``size`` (how many processes), ``all_reduce(arrays)``
(each array replaced, in place, by its sum over the processes) and ``sum(values)`` (the
sums over the processes of a few numbers); :class:`gpunet.distributed.World` is one.
"""
from __future__ import annotations

_default = None


def set_default(group) -> None:
    """Make ``group`` the one layers without a group of their own reduce over."""
    global _default
    _default = group


def default():
    """The registered process group, or ``None`` outside a distributed job."""
    return _default
