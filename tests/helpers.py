"""Naive float64 references (obviously right, loops over outputs) and an
assertion that reports the max error and the first bad index."""
import importlib.util
import math
import os
import pathlib
import subprocess
import sys

import numpy
import pytest

from gpunet import backend, nn
from gpunet.backend import to_numpy

# The suite runs with the CuPy test double in CuPy's place (tests/conftest.py):
# its kernels run in the CPU emulator, so tests keep to small shapes there.
CUPY_DOUBLE = os.environ.get("GPUNET_CUPY_DOUBLE", "0") == "1"
# matplotlib is optional (the train and tune extras): plots are checked where it is
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def assert_close(actual, expected, rtol=1e-5, atol=1e-6, what="value"):
    """``|a - e| <= atol + rtol |e|`` everywhere, else say where and by how much."""
    actual = numpy.asarray(to_numpy(actual), dtype=numpy.float64)
    expected = numpy.asarray(to_numpy(expected), dtype=numpy.float64)
    assert actual.shape == expected.shape, \
        f"{what}: shape {actual.shape} != expected {expected.shape}"
    err = numpy.abs(actual - expected)
    bad = err > atol + rtol * numpy.abs(expected)
    if bad.any():
        first = tuple(int(i) for i in numpy.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} entries differ; max abs error "
            f"{err.max():.3e}; first bad index {first}: got {actual[first]!r}, "
            f"expected {expected[first]!r}")


def rel_error(actual, expected) -> float:
    a = numpy.asarray(to_numpy(actual), dtype=numpy.float64)
    e = numpy.asarray(to_numpy(expected), dtype=numpy.float64)
    return float(numpy.max(numpy.abs(a - e) / (numpy.abs(e) + 1e-12)))


def _pad(x, pads, value=0.0):
    (pt, pb), (pl, pr) = pads
    return numpy.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)


def _out(n, f, s, p):
    return (n + p[0] + p[1] - f) // s + 1


def conv2d_ref(x, w, b, stride, pads):
    """``y[n,k,i,j] = sum_{c,r,s} W[k,c,r,s] xpad[n,c,i*sh+r,j*sw+s] + b[k]``."""
    x, w = numpy.float64(x), numpy.float64(w)
    xpad = _pad(x, pads)
    n_, _, h, wd = x.shape
    k_, c_, r_, s_ = w.shape
    oh, ow = _out(h, r_, stride[0], pads[0]), _out(wd, s_, stride[1], pads[1])
    y = numpy.zeros((n_, k_, oh, ow))
    for n in range(n_):
        for k in range(k_):
            for i in range(oh):
                for j in range(ow):
                    for c in range(c_):
                        for r in range(r_):
                            for s in range(s_):
                                y[n, k, i, j] += (w[k, c, r, s]
                                                  * xpad[n, c, i * stride[0] + r,
                                                         j * stride[1] + s])
                    if b is not None:
                        y[n, k, i, j] += b[k]
    return y


def conv2d_backward_ref(x, w, dy, stride, pads):
    """Each output's gradient flows back to the input pixels and weights it used."""
    x, w, dy = numpy.float64(x), numpy.float64(w), numpy.float64(dy)
    xpad = _pad(x, pads)
    dxpad, dw = numpy.zeros_like(xpad), numpy.zeros_like(w)
    _, _, r_, s_ = w.shape
    for n, k, i, j in numpy.ndindex(*dy.shape):
        hs, ws = i * stride[0], j * stride[1]
        dxpad[n, :, hs:hs + r_, ws:ws + s_] += dy[n, k, i, j] * w[k]
        dw[k] += dy[n, k, i, j] * xpad[n, :, hs:hs + r_, ws:ws + s_]
    (pt, _), (pl, _) = pads
    dx = dxpad[:, :, pt:pt + x.shape[2], pl:pl + x.shape[3]]
    return dx, dw, dy.sum(axis=(0, 2, 3))


def pool_out_ref(n, f, s, p, ceil_mode=False):
    """PyTorch's pooling output size, from its documented rule: ``floor`` or ``ceil``
    of ``(n + 2p - f) / s``, plus 1, less a last window starting in the right padding."""
    out = (math.ceil if ceil_mode else math.floor)((n + 2 * p - f) / s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def pool_ref(x, kernel, stride, pad, mode, ceil_mode=False, count_include_pad=True):
    """Max (first maximum in row-major order wins) or mean of each window, by loops
    in input coordinates: window ``(i, j)`` covers rows ``i*sh - ph ..`` and columns
    ``j*sw - pw ..``, of which only those inside the input are read. The mean's
    divisor counts the window's positions inside the padded input
    (``count_include_pad``, never ceil mode's overhang) or inside the input alone.
    Returns ``(y, dx_for(dy))``."""
    x = numpy.float64(x)
    n_, c_, h, w = x.shape
    oh, ow = (pool_out_ref(n, f, s, p, ceil_mode) for n, f, s, p in
              zip((h, w), kernel, stride, pad))

    def window(i, j):
        """The window's input rows and columns, and its divisor."""
        h0, w0 = i * stride[0] - pad[0], j * stride[1] - pad[1]
        rows = [r for r in range(h0, h0 + kernel[0]) if 0 <= r < h]
        cols = [q for q in range(w0, w0 + kernel[1]) if 0 <= q < w]
        if count_include_pad:
            count = (min(h0 + kernel[0], h + pad[0]) - h0) * (min(w0 + kernel[1], w + pad[1]) - w0)
        else:
            count = len(rows) * len(cols)
        return rows, cols, count

    y = numpy.zeros((n_, c_, oh, ow))
    argmax = {}
    for n, c, i, j in numpy.ndindex(n_, c_, oh, ow):
        rows, cols, count = window(i, j)
        if mode == "max":
            best, where = -numpy.inf, None
            for r in rows:
                for q in cols:
                    if where is None or x[n, c, r, q] > best:
                        best, where = x[n, c, r, q], (r, q)
            y[n, c, i, j], argmax[n, c, i, j] = best, where
        else:
            y[n, c, i, j] = sum(x[n, c, r, q] for r in rows for q in cols) / count

    def backward(dy):
        dx = numpy.zeros_like(x)
        for n, c, i, j in numpy.ndindex(*dy.shape):
            if mode == "max":
                dx[(n, c) + argmax[n, c, i, j]] += dy[n, c, i, j]
            else:
                rows, cols, count = window(i, j)
                for r in rows:
                    for q in cols:
                        dx[n, c, r, q] += dy[n, c, i, j] / count
        return dx

    return y, backward


def batch_norm_ref(x, gamma, beta, eps):
    """Per channel, the notes' four equations, over every other axis."""
    x = numpy.float64(x)
    y = numpy.empty_like(x)
    for c in range(x.shape[1]):
        z = x[:, c]
        mu = z.sum() / z.size
        var = ((z - mu) ** 2).sum() / z.size
        y[:, c] = gamma[c] * (z - mu) / numpy.sqrt(var + eps) + beta[c]
    return y


def lrn_ref(x, size, alpha, beta, k):
    """``x_c / (k + alpha/size * sum over the window of x^2)^beta``, channel by channel."""
    x = numpy.float64(x)
    y = numpy.empty_like(x)
    channels = x.shape[1]
    for c in range(channels):
        lo, hi = max(0, c - size // 2), min(channels - 1, c + (size - 1) // 2)
        s = sum(x[:, j] ** 2 for j in range(lo, hi + 1))
        y[:, c] = x[:, c] / (k + alpha / size * s) ** beta
    return y


def numeric_vjp(f, x, dy, eps=1e-6):
    """``d/dx sum(f(x) * dy)`` by centred differences in float64."""
    x = numpy.float64(x).copy()
    grad = numpy.zeros_like(x)
    for idx in numpy.ndindex(*x.shape):
        old = x[idx]
        x[idx] = old + eps
        plus = (f(x) * dy).sum()
        x[idx] = old - eps
        minus = (f(x) * dy).sum()
        x[idx] = old
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


def idx_images(n):
    """The bytes of an IDX file of ``n`` blank 28x28 images."""
    header = numpy.array([0x00000803, n, 28, 28], dtype=">i4").tobytes()
    return header + bytes(n * 28 * 28)


def idx_labels(n):
    """The bytes of an IDX file of ``n`` labels, all 0."""
    return numpy.array([0x00000801, n], dtype=">i4").tobytes() + bytes(n)


def tiny_model(batch_norm=False):
    """Flatten and Linear(4, 3) (and BatchNorm1d(3)): a model for (N, 1, 2, 2) images."""
    layers = [nn.Flatten(), nn.Linear(4, 3)] + ([nn.BatchNorm1d(3)] if batch_norm else [])
    return nn.Sequential(*layers)


def tiny_data(n, rng, classes=3):
    """``n`` random (1, 2, 2) float32 images and labels below ``classes``."""
    return rng.standard_normal((n, 1, 2, 2)).astype("float32"), rng.integers(0, classes, n)


REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def gpunet_cli(*args, env=None, cwd=None, timeout=300):
    """``python -m gpunet ARGS`` in a fresh process, on the CPU, with this checkout first."""
    env = {**os.environ, "GPUNET_DEVICE": "cpu", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "gpunet", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def only_error_line(done) -> str:
    """The one line a failing command printed on stderr, and no traceback."""
    lines = [line for line in done.stderr.splitlines()
             if line.strip() and "warning" not in line]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    return lines[0]


def one_gpunet_line(err: str) -> str:
    """The one ``gpunet:`` line (warnings aside) of ``err``, which holds no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("gpunet:")
             and "warning" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def needs_cuda():
    """Skip the calling test, with the reason, where no GPU (or test double) is usable."""
    reason = backend.cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")


def double_launch_recorder():
    """``(cupy, take)`` in the CuPy test double, whose RawKernel records each launch:
    ``take()`` returns the launches ``(kernel, grid, block, shared_mem)`` since its last
    call (or since this one). Skips without the double (a GPU records nothing)."""
    needs_cuda()
    xp = backend.Device("cuda").xp
    if not getattr(xp, "IS_TEST_DOUBLE", False):
        pytest.skip("reads the launches the CuPy test double records")
    from cupy import _raw
    start = len(_raw.launches)

    def take():
        nonlocal start
        got = [tuple(launch) for launch in _raw.launches[start:]]
        start = len(_raw.launches)
        return got
    return xp, take
