"""Naive float64 references (obviously right, loops over outputs) and an
assertion that reports the max error and the first bad index."""
import importlib.util
import os

import numpy

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


def pool_ref(x, kernel, stride, pad, mode):
    """Max (first maximum in row-major order wins) or mean (padding counted) of
    each window; returns ``(y, dx_for(dy))``."""
    x = numpy.float64(x)
    pads = ((pad[0], pad[0]), (pad[1], pad[1]))
    xpad = _pad(x, pads, -numpy.inf if mode == "max" else 0.0)
    n_, c_, h, w = x.shape
    oh, ow = _out(h, kernel[0], stride[0], pads[0]), _out(w, kernel[1], stride[1], pads[1])
    y = numpy.zeros((n_, c_, oh, ow))
    argmax = {}
    for n, c, i, j in numpy.ndindex(n_, c_, oh, ow):
        hs, ws = i * stride[0], j * stride[1]
        if mode == "max":
            best, where = -numpy.inf, None
            for r in range(kernel[0]):
                for s in range(kernel[1]):
                    v = xpad[n, c, hs + r, ws + s]
                    if where is None or v > best:
                        best, where = v, (hs + r, ws + s)
            y[n, c, i, j], argmax[n, c, i, j] = best, where
        else:
            y[n, c, i, j] = xpad[n, c, hs:hs + kernel[0], ws:ws + kernel[1]].sum() / (
                kernel[0] * kernel[1])

    def backward(dy):
        dxpad = numpy.zeros_like(xpad)
        for n, c, i, j in numpy.ndindex(*dy.shape):
            if mode == "max":
                dxpad[(n, c) + argmax[n, c, i, j]] += dy[n, c, i, j]
            else:
                hs, ws = i * stride[0], j * stride[1]
                dxpad[n, c, hs:hs + kernel[0], ws:ws + kernel[1]] += dy[n, c, i, j] / (
                    kernel[0] * kernel[1])
        return dxpad[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + w]

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
