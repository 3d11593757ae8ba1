"""The process group that synchronised layers (:class:`gpunet.nn.SyncBatchNorm`) reduce
over when none is given them: :func:`gpunet.distributed.init` registers its world here,
so that ``nn`` reaches the collectives without importing ``distributed``.

A process group is any object with ``size`` (how many processes), ``all_reduce(arrays)``
(each array replaced, in place, by its sum over the processes) and ``sum(values)`` (the
sums over the processes of a few numbers); :class:`gpunet.distributed.World` is one.
"""
from __future__ import annotations

_default = None


def check(group, name: str = "process_group"):
    """``group`` itself when it is ``None`` or has what a process group has, else a
    one-line TypeError naming ``name`` (caught where it is given, not at the first
    reduction of a distributed run)."""
    missing = [attr for attr in ("size", "all_reduce", "sum") if not hasattr(group, attr)]
    if group is not None and missing:
        raise TypeError(f"{name}: expected a process group (size, all_reduce and sum, as "
                        f"gpunet.distributed.World has) or None, got {group!r} (no "
                        f"{', '.join(missing)})")
    return group


def set_default(group) -> None:
    """Make ``group`` the one layers without a group of their own reduce over."""
    global _default
    _default = group


def default():
    """The registered process group, or ``None`` outside a distributed job."""
    return _default
