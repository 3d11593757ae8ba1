"""Launchers for ``kernels/optim.cu``: one launch updates a parameter and its
optimizer state in place (Adam and AdamW, SGD with momentum and Nesterov, the
notes' momentum, RMSProp), the rule of the pure xp functions of
``gpunet.optim.updates``."""
from __future__ import annotations

import numpy

from ..backend import get_array_module
from . import runtime
from .runtime import BLOCK, Launch, ceil_div, check_indexable

# A parameter's elements in a grid-stride loop over at most this many blocks: enough
# to fill any GPU several times (132 SMs x 2048 threads = 1056 blocks of 256), fixed so
# that the launch depends on the size alone.
MAX_BLOCKS = 4096
_DTYPES = ("float32", "float64")


def step_plan(kernel: str, size: int) -> list[Launch]:
    """The launch of one parameter's update: ``kernel`` over ``size`` elements, a thread
    an element up to MAX_BLOCKS blocks; none for an empty parameter."""
    if size == 0:
        return []
    return [Launch(kernel, (min(ceil_div(size, BLOCK), MAX_BLOCKS), 1, 1), (BLOCK, 1, 1))]


def accelerates(w, g, *state) -> bool:
    """Whether the kernels update ``w`` (a parameter's array) from ``g`` (its gradient)
    with ``state`` (its optimizer's arrays, ``None`` where not created yet) in place:
    CuPy arrays with kernels enabled (``GPUNET_KERNELS=0``: the xp path), float32 or
    float64, all of ``w``'s dtype and shape, ``w`` and ``state`` C-contiguous (a kernel
    ignores strides, and an update in place cannot go through a copy), at most
    ``runtime.index_limit()`` elements."""
    xp = get_array_module(w)
    if not runtime.uses_kernels(xp) or w.dtype.name not in _DTYPES:
        return False
    arrays = [w, g, *(s for s in state if s is not None)]
    return runtime.indexable(w.size) and all(
        get_array_module(a) is xp and a.dtype == w.dtype and a.shape == w.shape
        for a in arrays) and all(a.flags.c_contiguous for a in arrays if a is not g)


def _checked(where: str, w, g, **state):
    """``g`` as a contiguous array of ``w``'s module, dtype and shape; ``w`` and each of
    ``state`` (updated in place) checked to be so already. One-line errors."""
    xp = get_array_module(w)
    if w.dtype.name not in _DTYPES:
        raise TypeError(f"{where}: w must be float32 or float64, got {w.dtype}")
    check_indexable(where, w=w.size)
    for name, a in {"w": w, **state}.items():
        if get_array_module(a) is not xp or a.dtype != w.dtype or a.shape != w.shape:
            raise ValueError(f"{where}: {name} must be a {xp.__name__} {w.dtype} array of "
                             f"shape {w.shape}, got {type(a).__name__} {a.dtype} {a.shape}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{where}: {name} must be C-contiguous (updated in place), got "
                             f"strides {a.strides}")
    if get_array_module(g) is not xp or g.dtype != w.dtype or g.shape != w.shape:
        raise ValueError(f"{where}: g must be a {xp.__name__} {w.dtype} array of shape "
                         f"{w.shape}, got {type(g).__name__} {g.dtype} {g.shape}")
    return xp.ascontiguousarray(g)


def _run(kernel: str, w, args) -> None:
    for plan in step_plan(kernel, w.size):
        plan.run("optim", w.dtype, args)


def adam_step(w, g, m, v, t: int, lr: float, beta1: float, beta2: float, eps: float,
              l2: float = 0.0, decoupled_decay: float = 0.0) -> None:
    """Adam's step ``t`` (>= 1) of ``w`` in place (:func:`~gpunet.optim.updates.
    adam_update`), ``m`` and ``v`` updated too: ``l2`` adds ``l2 w`` to the gradient
    (Adam's ``weight_decay`` on a decayed parameter); ``decoupled_decay`` shrinks ``w``
    by ``1 - lr decoupled_decay`` first (AdamW's, :func:`~gpunet.optim.updates.
    adamw_update`). One launch."""
    g = _checked("adam_step", w, g, m=m, v=v)
    if int(t) < 1:
        raise ValueError(f"adam_step: t must be >= 1 (the bias corrections divide by "
                         f"1 - beta^t), got {t}")
    if l2 and decoupled_decay:
        raise ValueError(f"adam_step: give l2 (Adam) or decoupled_decay (AdamW), not both; "
                         f"got l2={l2}, decoupled_decay={decoupled_decay}")
    real = w.dtype.type
    decay = bool(l2 or decoupled_decay)
    # rounded as the xp path's ``m / (1.0 - beta1 ** t)`` rounds the Python float
    correction1, correction2 = real(1.0 - beta1 ** t), real(1.0 - beta2 ** t)
    _run("adam_step", w, (
        w, g, m, v, numpy.int32(w.size), real(lr), real(beta1), real(1.0 - beta1), real(beta2),
        real(1.0 - beta2), correction1, real(1.0) / correction1, correction2,
        real(1.0) / correction2, real(eps), real(l2), real(1.0 - lr * decoupled_decay),
        numpy.int32(decay), numpy.int32(bool(decoupled_decay))))


def sgd_step(w, g, buffer, lr: float, momentum: float = 0.0, dampening: float = 0.0,
             nesterov: bool = False, l2: float = 0.0):
    """PyTorch's SGD step of ``w`` in place (:func:`~gpunet.optim.updates.sgd_update`)
    with ``l2 w`` added to the gradient; returns the momentum buffer: ``buffer``
    updated in place, a new one (the gradient) when ``buffer`` is ``None``, ``buffer``
    untouched without momentum. One launch."""
    if momentum and buffer is None:
        buffer = runtime.new_output(get_array_module(w), w.shape, w.dtype)
        mode = 1
    else:
        mode = 2 if momentum else 0
    state = {"buffer": buffer} if mode else {}
    g = _checked("sgd_step", w, g, **state)
    if nesterov and (not momentum or dampening):
        raise ValueError(f"sgd_step: nesterov needs momentum > 0 and dampening = 0, got "
                         f"momentum={momentum}, dampening={dampening}")
    real = w.dtype.type
    # without momentum the kernel never touches the buffer: any array of the type
    _run("sgd_step", w, (w, g, buffer if mode else w, numpy.int32(w.size), real(lr),
                         real(momentum), real(1.0 - dampening), real(l2), numpy.int32(bool(l2)),
                         numpy.int32(mode), numpy.int32(bool(dampening)),
                         numpy.int32(bool(nesterov))))
    return buffer


def momentum_step(w, g, velocity, lr: float, beta: float, l2: float = 0.0) -> None:
    """The notes' momentum step of ``w`` and ``velocity`` in place
    (:func:`~gpunet.optim.updates.momentum_update`), ``l2 w`` added to the gradient.
    One launch."""
    g = _checked("momentum_step", w, g, velocity=velocity)
    real = w.dtype.type
    _run("momentum_step", w, (w, g, velocity, numpy.int32(w.size), real(lr), real(beta),
                              real(1.0 - beta), real(l2), numpy.int32(bool(l2))))


def rmsprop_step(w, g, square_avg, lr: float, beta: float, eps: float, l2: float = 0.0) -> None:
    """RMSProp's step of ``w`` and ``square_avg`` in place
    (:func:`~gpunet.optim.updates.rmsprop_update`), ``l2 w`` added to the gradient.
    One launch."""
    g = _checked("rmsprop_step", w, g, square_avg=square_avg)
    real = w.dtype.type
    _run("rmsprop_step", w, (w, g, square_avg, numpy.int32(w.size), real(lr), real(beta),
                             real(1.0 - beta), real(eps), real(l2), numpy.int32(bool(l2))))


def _current_device(xp) -> int:
    return -1 if xp is numpy else xp.cuda.Device().id  # NumPy: the tests' emulation


def _on_current_device(a) -> bool:
    xp = get_array_module(a)
    return xp is numpy or a.device.id == _current_device(xp)


def zero_plan(sizes) -> list[Launch]:
    """The launches of :func:`zero_arrays` for arrays of ``sizes`` elements (of one
    dtype, none empty): a grid row an array, at most ``runtime.MAX_GRID_ROWS`` rows a
    launch, as many blocks across as the largest array of the launch needs (up to
    MAX_BLOCKS)."""
    sizes = [int(s) for s in sizes]
    rows = runtime.MAX_GRID_ROWS
    return [Launch("zero_arrays", (min(ceil_div(max(sizes[i:i + rows]), BLOCK), MAX_BLOCKS),
                                   len(sizes[i:i + rows]), 1), (BLOCK, 1, 1))
            for i in range(0, len(sizes), rows)]


def zero_arrays(arrays, tables: dict) -> list:
    """Set the arrays the kernels take (:func:`accelerates`, on the current device) to
    0 in place, one launch per dtype (:func:`zero_plan`), and return the others (the
    caller zeroes them with xp). ``tables`` (the caller's, kept between calls) caches
    the device tables of addresses and sizes per dtype: built again only when the
    arrays change, so that the same gradients cost no copy to the device."""
    groups, rest = {}, []
    for a in arrays:
        if a.size == 0:
            continue
        if accelerates(a, a) and a.flags.c_contiguous and _on_current_device(a):
            groups.setdefault(a.dtype.name, []).append(a)
        else:
            rest.append(a)
    for dtype, members in groups.items():
        xp = get_array_module(members[0])
        key = (tuple(runtime.address(a) for a in members), tuple(a.size for a in members),
               _current_device(xp))
        if tables.get(dtype, (None,))[0] != key:
            tables[dtype] = (key, xp.asarray(numpy.array(key[0], numpy.int64)),
                             xp.asarray(numpy.array(key[1], numpy.int32)))
        _, addresses, sizes = tables[dtype]
        start = 0
        for plan in zero_plan(key[1]):
            rows = plan.grid[1]
            plan.run("optim", dtype, (addresses[start:start + rows], sizes[start:start + rows]))
            start += rows
    return rest
