"""Convolution as one GEMM of input rows against a banded (Toeplitz) filter matrix.

One output row ``y[n, :, oh, :]`` (``K x OW`` values) sums, over channels ``c``
and kernel rows ``r``, one padded input row ``x[n, c, oh*sh + r, :]`` (``Wp``
values) times a ``Wp x (K*OW)`` matrix ``T[c, r]``: column ``(k, ow)`` of it
holds the filter row ``W[k, c, r, :]`` starting at row ``ow*sw`` and zeros
elsewhere. Stacking the rows gives one GEMM

    Y_rows (N*OH, K*OW) = X_rows (N*OH, C*R*Wp) @ T (C*R*Wp, K*OW).

It multiplies ``Wp / S`` times more (mostly by zero) than im2col, but copies
each input row ``R`` times instead of each pixel ``R*S`` times, and its GEMM is
one well-shaped product where im2col's are thin. With few filters on small maps,
as in LeNet-5's conv2, this wins (see :func:`gpunet.ops.conv.choose_algorithm`).

Backward: ``dT = X_rows^T dY_rows``, and ``dW`` sums ``dT`` along the same band;
``dX_rows = dY_rows T^T`` is added back onto the ``R`` input rows it came from.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import common_array_module


class ToeplitzContext(NamedTuple):
    """What backward needs: the input rows, the banded filter matrix, the shapes."""

    x_rows: object  # (N*OH, C*R*Wp)
    band: object  # (C*R*Wp, K*OW)
    x_shape: tuple
    w_shape: tuple
    stride: tuple
    pads: tuple
    out_hw: tuple
    has_bias: bool


def _band_view(t, w_shape, stride, out_w):
    """The entries of ``t`` (``(C, R, Wp, K, OW)``, contiguous) that lie on the
    band, as a ``(C, R, S, K, OW)`` view: ``[c, r, s, k, ow]`` is
    ``t[c, r, ow*sw + s, k, ow]``, where filter tap ``W[k, c, r, s]`` sits."""
    xp = common_array_module(t=t)
    sc, sr, sp, sk, so = t.strides
    _, c, r, s = w_shape
    return xp.lib.stride_tricks.as_strided(
        t, shape=(c, r, s, w_shape[0], out_w), strides=(sc, sr, sp, sk, sp * stride[1] + so))


def _input_rows(x_padded, kernel_rows, stride, out_hw):
    """``(N*OH, C*R*Wp)``: row ``(n, oh)`` holds the ``R`` padded input rows of
    every channel that output row ``oh`` reads."""
    xp = common_array_module(x=x_padded)
    n, c, _, wp = x_padded.shape
    sn, sc, sh, sw = x_padded.strides
    view = xp.lib.stride_tricks.as_strided(
        x_padded, shape=(n, out_hw[0], c, kernel_rows, wp),
        strides=(sn, sh * stride[0], sc, sh, sw))
    return view.reshape(n * out_hw[0], c * kernel_rows * wp)


def forward(x_padded, weight, bias, stride, pads, out_hw):
    """``(y, ctx)`` for ``x_padded (N, C, H + pt + pb, W + pl + pr)`` (``pads``
    already applied) and ``weight (K, C, R, S)``: the same cross-correlation as
    im2col, to float rounding."""
    xp = common_array_module(x=x_padded, weight=weight)
    n, _, hp, wp = x_padded.shape
    k, c, r, _ = weight.shape
    oh, ow = out_hw
    (pt, pb), (pl, pr) = pads
    x_shape = (n, c, hp - pt - pb, wp - pl - pr)
    x_padded = xp.ascontiguousarray(x_padded)
    x_rows = _input_rows(x_padded, r, stride, out_hw)
    band = xp.zeros((c, r, wp, k, ow), dtype=weight.dtype)
    _band_view(band, weight.shape, stride, ow)[...] = weight.transpose(1, 2, 3, 0)[..., None]
    band = band.reshape(c * r * wp, k * ow)
    y_rows = (x_rows @ band).reshape(n, oh, k, ow)
    y = xp.empty((n, k, oh, ow), dtype=y_rows.dtype)
    if bias is None:
        y[...] = y_rows.transpose(0, 2, 1, 3)
    else:  # the bias is added on the way to (N, K, OH, OW): one pass over y
        xp.add(y_rows.transpose(0, 2, 1, 3), bias[:, None, None], out=y)
    return y, ToeplitzContext(x_rows, band, x_shape, tuple(weight.shape), stride, pads, out_hw,
                              bias is not None)


def backward(dy, ctx: ToeplitzContext, input_grad: bool = True):
    """``(dx, dweight, dbias)``; ``dx`` is ``None`` with ``input_grad=False``."""
    xp = common_array_module(dy=dy, band=ctx.band)
    n, c, h, w = ctx.x_shape
    k, _, r, _ = ctx.w_shape
    oh, ow = ctx.out_hw
    (pt, pb), (pl, pr) = ctx.pads
    hp, wp = h + pt + pb, w + pl + pr
    dy_rows = xp.ascontiguousarray(dy.transpose(0, 2, 1, 3)).reshape(n * oh, k * ow)
    # down the rows first: NumPy sums a contiguous axis 0 row by row, fast
    dbias = dy_rows.sum(axis=0).reshape(k, ow).sum(axis=1) if ctx.has_bias else None
    d_band = (ctx.x_rows.T @ dy_rows).reshape(c, r, wp, k, ow)
    dweight = _band_view(d_band, ctx.w_shape, ctx.stride, ow).sum(axis=4).transpose(3, 0, 1, 2)
    dweight = xp.ascontiguousarray(dweight)
    if not input_grad:
        return None, dweight, dbias
    dx_rows = (dy_rows @ ctx.band.T).reshape(n, oh, c, r, wp)
    dx_padded = xp.zeros((n, c, hp, wp), dtype=dy.dtype)
    last = ctx.stride[0] * (oh - 1) + 1
    for kernel_row in range(r):
        dx_padded[:, :, kernel_row:kernel_row + last:ctx.stride[0]] += (
            dx_rows[:, :, :, kernel_row].transpose(0, 2, 1, 3))
    return dx_padded[:, :, pt:pt + h, pl:pl + w], dweight, dbias
