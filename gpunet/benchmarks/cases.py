"""The one table of benchmark cases: layer shapes of LeNet-5, the CIFAR AlexNet,
AlexNet-224 and VGG-16 (``LAYER_CASES``), the training steps (``STEP_CASES``),
and the work each does (FLOPs for convolutions and steps, bytes moved for pooling
and batch norm), so that a time becomes GFLOP/s or GB/s."""
from __future__ import annotations

import dataclasses

import numpy

from .. import models, nn


@dataclasses.dataclass(frozen=True)
class Case:
    """One thing to time: a layer's forward + backward, or a whole training step.
    ``shape`` has the batch of a CPU run; ``gpu_batch`` is the batch ``make
    gpu-check`` times the layer at (:meth:`on_gpu`)."""
    net: str
    name: str
    op: str  # conv | maxpool | avgpool | batchnorm | step
    shape: tuple  # input (N, C, H, W)
    args: tuple = ()  # the layer's constructor arguments (the same for PyTorch)
    kwargs: tuple = ()  # ((name, value), ...)
    gpu_batch: int | None = None

    @property
    def id(self) -> str:
        return f"{self.net}/{self.name}"

    def on_gpu(self) -> Case:
        """The case at its GPU batch."""
        return dataclasses.replace(self, shape=(self.gpu_batch or self.shape[0],
                                                *self.shape[1:]))

    def work(self) -> tuple[float, str]:
        """``(amount, unit)`` of forward + backward: FLOPs, or bytes for memory-bound ops."""
        if self.op == "step":
            return step_flops(self.net, self.shape[0]), "flop"
        return self.forward_work() + self.backward_work(), "flop" if self.op == "conv" else "byte"

    def forward_work(self) -> float:
        """FLOPs (convolution) or bytes moved (pooling, batch norm, 4-byte floats) of
        the forward, as gpunet's kernels do it."""
        n, c, h, w = self.shape
        if self.op == "conv":
            k, (r, s), (oh, ow) = self.args[1], self.kernel, self.out_hw
            return 2.0 * n * k * oh * ow * c * r * s
        if self.op == "maxpool":  # read x; write y and the argmax
            oh, ow = self.out_hw
            return 4.0 * (n * c * h * w + 2 * n * c * oh * ow)
        if self.op == "avgpool":  # read x; write y
            oh, ow = self.out_hw
            return 4.0 * (n * c * h * w + n * c * oh * ow)
        return 4.0 * 5 * n * c * h * w  # batch norm: x read three times; y and x_hat written

    def backward_work(self) -> float:
        """The same for the backward: dx and dW, twice the forward's FLOPs; max pooling
        reads dy and the argmax and writes dx; batch norm reads dy and x_hat twice and
        writes dx."""
        return 2 * self.forward_work() if self.op == "conv" else self.forward_work()

    @property
    def kernel(self) -> tuple[int, int]:
        k = self.args[2] if self.op == "conv" else self.args[0]
        return (k, k) if isinstance(k, int) else tuple(k)

    @property
    def stride(self) -> int:
        if self.op == "conv":
            return dict(self.kwargs).get("stride", 1)
        return self.args[1] if len(self.args) > 1 else self.args[0]

    @property
    def padding(self) -> int:
        if self.op == "conv":
            return dict(self.kwargs).get("padding", 0)
        return self.args[2] if self.op.endswith("pool") and len(self.args) > 2 else 0

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple((n + 2 * self.padding - f) // self.stride + 1
                     for n, f in zip(self.shape[2:], self.kernel))


def _conv(net, name, n, c, hw, k, f, stride=1, padding=0, gpu_batch=None):
    return Case(net, name, "conv", (n, c, hw, hw), (c, k, f),
                (("stride", stride), ("padding", padding)), gpu_batch)


def _pool(net, name, n, c, hw, f, stride, gpu_batch=None):
    return Case(net, name, "maxpool", (n, c, hw, hw), (f, stride), (), gpu_batch)


def _bn(net, name, n, c, hw, gpu_batch=None):
    return Case(net, name, "batchnorm", (n, c, hw, hw), (c,), (), gpu_batch)


# The one table of layer cases, for gpunet bench, pytest bench/ and make gpu-check.
# CPU batches: the training batches of the two CPU workloads, smaller ones at 224
# pixels so that a CPU run stays within minutes; on the GPU, 32 and 16 there.
LAYER_CASES = [
    _conv("lenet5", "conv1", 128, 1, 32, 6, 5), _conv("lenet5", "conv2", 128, 6, 14, 16, 5),
    _pool("lenet5", "pool1", 128, 6, 28, 2, 2), _bn("lenet5", "bn1", 128, 6, 28),
    _conv("alexnet_cifar", "conv1", 64, 3, 32, 64, 5, padding=2),
    _conv("alexnet_cifar", "conv2", 64, 64, 15, 128, 5, padding=2),
    _conv("alexnet_cifar", "conv4", 64, 192, 7, 192, 3, padding=1),
    _pool("alexnet_cifar", "pool1", 64, 64, 32, 3, 2), _bn("alexnet_cifar", "bn2", 64, 128, 15),
    _conv("alexnet224", "conv1", 16, 3, 224, 64, 11, stride=4, padding=2, gpu_batch=32),
    _conv("alexnet224", "conv2", 16, 64, 27, 192, 5, padding=2, gpu_batch=32),
    _conv("alexnet224", "conv3", 16, 192, 13, 384, 3, padding=1, gpu_batch=32),
    _pool("alexnet224", "pool1", 16, 64, 55, 3, 2, gpu_batch=32),
    _bn("alexnet224", "bn2", 16, 192, 27, gpu_batch=32),
    _conv("vgg16", "conv1_2", 4, 64, 224, 64, 3, padding=1, gpu_batch=16),
    _conv("vgg16", "conv3_2", 4, 256, 56, 256, 3, padding=1, gpu_batch=16),
    _conv("vgg16", "conv5_2", 4, 512, 14, 512, 3, padding=1, gpu_batch=16),
    _pool("vgg16", "pool1", 4, 64, 224, 2, 2, gpu_batch=16),
    _bn("vgg16", "bn3_2", 4, 256, 56, gpu_batch=16),
]
STEP_WORKLOADS = {"lenet5": (models.lenet5, 128, (1, 32, 32)),
                  "alexnet_cifar": (models.alexnet_cifar, 64, (3, 32, 32))}
STEP_CASES = [Case(net, "train_step", "step", (batch, *shape))
              for net, (_, batch, shape) in STEP_WORKLOADS.items()]
CASES = LAYER_CASES + STEP_CASES


def step_flops(net: str, batch: int) -> int:
    """Forward + backward FLOPs of a training step: 3x the forward of every conv and
    linear layer (the first layer needs no input gradient: 2x)."""
    make, _, shape = STEP_WORKLOADS[net]
    flops, first = 0, True
    x = numpy.zeros((1, *shape), numpy.float32)
    # on the CPU whatever the current device: only the shapes matter here
    for layer in make().to("cpu", dtype="float32"):
        y = layer.forward(x)
        if isinstance(layer, nn.Conv2d):
            forward = 2 * batch * layer.weight.data.size * y.shape[2] * y.shape[3]
        elif isinstance(layer, nn.Linear):
            forward = 2 * batch * layer.weight.data.size
        else:
            forward = 0
        if forward:
            flops += (2 if first else 3) * forward
            first = False
        x = y
    return flops

