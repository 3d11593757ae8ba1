"""The two implementations of each case: a function doing it once with gpunet,
and the same with its PyTorch twin, each synchronised before it returns."""
from __future__ import annotations

from collections.abc import Callable

import numpy

from .. import backend, losses, nn, optim
from ..train import train_step
from .cases import STEP_WORKLOADS, Case
from .twin import torch_model, torch_twin


def _gpunet_layer(case: Case):
    make = {"conv": nn.Conv2d, "maxpool": nn.MaxPool2d, "avgpool": nn.AvgPool2d,
            "batchnorm": nn.BatchNorm2d}[case.op]
    return make(*case.args, **dict(case.kwargs))


def _batch(shape, seed=0):
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal(shape, numpy.float32), rng.integers(0, 10, shape[0])


def gpunet_runner(case: Case, device: str = "cpu") -> Callable[[], object]:
    """A function doing the case once on ``device``, synchronised before it returns.
    A layer case returns ``(y, dx)``; its parameters come from ``manual_seed(0)``,
    as :func:`torch_runner`'s, so the two libraries compute the same thing."""
    backend.tune_cpu_allocator()  # as fit and the CLI: the process these steps run in
    dev = backend.set_device(device)
    xp = dev.xp
    sync = dev.synchronize
    x, y = _batch(case.shape)
    x = xp.asarray(x)
    if case.op == "step":
        backend.manual_seed(0)
        make, _, _ = STEP_WORKLOADS[case.net]
        model, loss = make(), losses.SoftmaxCrossEntropy()
        opt = optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        y = xp.asarray(y)

        def step():  # as PyTorch's: no check for NaN (fit's step has one)
            train_step(model, loss, opt, x, y, check_finite=False)
            sync()
        return step
    backend.manual_seed(0)
    layer = _gpunet_layer(case)
    dy = xp.ones_like(layer(x))

    def forward_backward():
        y = layer(x)
        dx = layer.backward(dy)
        sync()
        return y, dx
    return forward_backward


def torch_runner(case: Case, torch, device: str = "cpu") -> Callable[[], object]:
    """:func:`gpunet_runner` in PyTorch: the twin of gpunet's layer (same parameters)."""
    tdev = torch.device("cuda" if device.startswith("cuda") else "cpu")
    sync = torch.cuda.synchronize if tdev.type == "cuda" else (lambda: None)
    x, y = (torch.from_numpy(a).to(tdev) for a in _batch(case.shape))
    if case.op == "step":
        torch.manual_seed(0)
        model = torch_model(case.net, torch).to(tdev)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        loss = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad()
            loss(model(x), y).backward()
            opt.step()
            sync()
        return step
    backend.manual_seed(0)
    layer = torch_twin(_gpunet_layer(case), torch).to(tdev)
    x.requires_grad_(True)
    dy = torch.ones_like(layer(x))

    def forward_backward():
        x.grad = None
        y = layer(x)
        y.backward(dy)
        sync()
        return y, x.grad
    return forward_backward

