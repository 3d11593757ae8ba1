"""Each layer initialised for what feeds it, so that a shipped model starts near
chance (loss ln(classes)) instead of far above it.

The notes' He initialisation, ``var(w) = 2 / fan_in``, keeps a layer's
pre-activations at the variance of the previous ones when its input is a ReLU of
them: a ReLU keeps half the second moment. Our models pool before (or after) the
ReLU, and a max over a window keeps the larger values: ``E[relu(max of n)^2]`` is
1.54 for 2x2 windows and 2.56 for 3x3 ones (unit-variance Gaussians), not 0.5, so
plain He grows the signal three to five times at every pooling, and the head's
logits with it (initial losses of 3 to 9 on ten classes). So each weight gets
``var(w) = 1 / (fan_in * moment)``, ``moment`` the second moment of its input per
unit variance of the previous pre-activations: 0.5 after a ReLU (He), the pooled
values above after max pooling, divided by ``k^(2 beta)`` after local response
normalisation, by ``1 - p`` after inverted dropout (in training), reset to 1 by
batch norm. The first layer sees the standardised data (moment 1: the notes'
Xavier, ``1 / fan_in``). The softmax head gets ``1 / (2 fan_in moment)``, logits of
variance 1/2, whatever came before: after a plain ReLU (moment 1/2) that is the
notes' Xavier for it, ``1 / fan_in``; after a dropout in training it is half that.
"""
from __future__ import annotations

import math
from functools import cache

import numpy

from ..nn import (
    Conv2d,
    Dropout,
    Linear,
    LocalResponseNorm,
    MaxPool2d,
    ReLU,
)
from ..nn.module import Module
from ..nn.normalization import _BatchNorm  # SyncBatchNorm too


@cache
def relu_of_max_moment(window: int) -> float:
    """``E[relu(max(z_1 .. z_n))^2]`` for ``n = window`` independent standard normal
    ``z``: 0.5 for one value (He's case). The max's density is ``n phi Phi^(n-1)``,
    integrated over the positive half on a fine grid."""
    x = numpy.linspace(0.0, 12.0, 120_001)
    phi = numpy.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1.0 + numpy.array([math.erf(v / math.sqrt(2)) for v in x[::100]]))
    cdf = numpy.interp(x, x[::100], cdf)  # erf on every 100th point is exact enough
    return float(numpy.trapezoid(x * x * window * phi * cdf ** (window - 1), x))


def init_for_what_feeds_each_layer(model: Module) -> Module:
    """Rescale ``model``'s He-initialised convolution and linear weights in place as
    the module docstring says (a He draw times a factor is a draw of the new
    variance); returns ``model``. Walks the leaf layers in their forward order."""
    layers = [m for m in model.modules() if not list(m.children())]
    weighted = [m for m in layers if isinstance(m, (Conv2d, Linear))]
    if not weighted or not weighted[0].weight.data.flags.writeable:  # init.shapes_only()
        return model
    # moment: E[input^2] per unit variance of the last pre-activations; a max pool
    # before the ReLU sets the window the ReLU's max runs over, one after scales it
    moment, window, rectified = 1.0, 1, False  # the data: standardised
    for layer in layers:
        if isinstance(layer, (Conv2d, Linear)):
            target = 2 * moment if layer is weighted[-1] else moment  # the head: logits at 1/2
            layer.weight.data *= math.sqrt(0.5 / target)  # He's var 2/fan_in -> 1/(fan_in m)
            moment, window, rectified = 1.0, 1, False
        elif isinstance(layer, _BatchNorm):
            moment = 1.0  # unit variance again, whatever came before
        elif isinstance(layer, MaxPool2d):
            n = layer.kernel_size[0] * layer.kernel_size[1]
            if rectified:
                moment *= relu_of_max_moment(n) / relu_of_max_moment(1)
            else:
                window = n
        elif isinstance(layer, ReLU):
            moment *= relu_of_max_moment(window)
            rectified = True
        elif isinstance(layer, LocalResponseNorm):
            moment /= layer.k ** (2 * layer.beta)  # x / (k + small)^beta at the start
        elif isinstance(layer, Dropout) and layer.p < 1:
            moment /= 1.0 - layer.p
    return model
