"""Where an op's call goes (:func:`route`), and the CPU scope of work spanning several
ops (:func:`cpu_scope`). The context every forward returns and the window geometry
live on the ground floor (:mod:`gpunet._context`), where the accelerators reach them.

Each op in ``gpunet.ops`` has up to three implementations: the textbook xp path in
its own file (NumPy or CuPy, and the reference the other two are tested against),
the CPU accelerators in ``gpunet/cpu/<op>.py`` and the CUDA launchers in
``gpunet/cuda/<op>.py``. All three return ``(y, ctx)`` from their forward, with
``ctx`` a :class:`gpunet._context.Context`.
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy

from .. import _checks, config
from ..cpu.parallel import single_threaded_blas
from ..cuda import uses_kernels


def cpu_accelerators_enabled() -> bool:
    """Whether NumPy arrays go to ``gpunet.cpu`` (``GPUNET_CPU_ACCEL=0``: the xp path)."""
    return config.get("cpu_accel")


def set_cpu_accelerators_enabled(enabled: bool) -> None:
    """``gpunet.config.update(cpu_accel=enabled)``."""
    config.update(cpu_accel=_checks.boolean("enabled", enabled))


def route(xp, use_kernels=None, fits: bool = True) -> str:
    """Which implementation runs an op on arrays of module ``xp``: ``"cuda"`` for CuPy
    arrays the kernels' 32-bit indices cover (``fits``; ``use_kernels`` True or False
    forces the choice, ``GPUNET_KERNELS=0`` turns the kernels off), ``"cpu"`` for
    NumPy arrays (``GPUNET_CPU_ACCEL=0`` turns that off), else ``"xp"``."""
    if use_kernels if use_kernels is not None else (uses_kernels(xp) and fits):
        return "cuda"
    if xp is numpy and cpu_accelerators_enabled():
        return "cpu"
    return "xp"


def cpu_scope(x):
    """A context manager for work on ``x`` that spans several ops (a model's pass, or
    many tiny GEMMs): on NumPy arrays with the CPU accelerators on, BLAS kept to one
    thread throughout (see :mod:`gpunet.cpu.parallel`: entering and leaving that
    limit has a cost, paid once here instead of once per op); otherwise nothing, and no
    CPU threads are touched."""
    if isinstance(x, numpy.ndarray) and cpu_accelerators_enabled():
        return single_threaded_blas()
    return nullcontext()
