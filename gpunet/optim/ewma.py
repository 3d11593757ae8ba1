"""Exponentially weighted moving averages: ``V_t = beta V_{t-1} + (1 - beta) theta_t``."""
from __future__ import annotations

import numpy

from .. import _checks


def ewma(values, beta: float, bias_correction: bool = True) -> numpy.ndarray:
    """``V_1..V_T`` for ``theta_1..theta_T`` (``V_0 = 0``), averaging over roughly
    ``1 / (1 - beta)`` values. With ``bias_correction`` each ``V_t`` is divided by
    ``1 - beta^t``, which removes the pull towards 0 of the first values."""
    beta = _checks.probability("beta", beta, upper_inclusive=False)
    theta = numpy.asarray(values, dtype=numpy.float64)
    if theta.ndim != 1:
        raise ValueError(f"values: expected a 1-D sequence, got shape {theta.shape}")
    out = numpy.empty_like(theta)
    v = 0.0
    for t, x in enumerate(theta):  # a recurrence: each V_t needs V_{t-1}
        v = beta * v + (1.0 - beta) * x
        out[t] = v
    if bias_correction:
        out /= 1.0 - beta ** numpy.arange(1, len(theta) + 1)
    return out
