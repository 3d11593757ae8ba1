"""PyTorch's twin of a gpunet model (the same layers, names, parameters and
buffers), and which PyTorch there is to compare with: none, its CPU build, or one
that can use the GPU (cuDNN)."""
from __future__ import annotations

import numpy

from .. import nn
from .cases import STEP_WORKLOADS


def torch_twin(model, torch):
    """PyTorch's twin of a gpunet model: the same layers in the same order under the
    same names, holding the same parameters and buffers (float32, on the CPU)."""
    nn_, own, layer = torch.nn, nn, model
    if isinstance(layer, own.Sequential):
        twin = nn_.Sequential()
        for name, child in layer.named_children():
            twin.add_module(name, torch_twin(child, torch))
        return twin
    if isinstance(layer, own.Conv2d):
        make = nn_.Conv2d
        if type(layer).padding_for is not own.Conv2d.padding_for:
            make = _input_padded_conv(torch, layer)
        twin = make(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                    layer.padding, layer.dilation, layer.groups, bias=layer.bias is not None)
    elif isinstance(layer, own.Linear):
        twin = nn_.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, (own.MaxPool2d, own.AvgPool2d)):
        make = nn_.MaxPool2d if isinstance(layer, own.MaxPool2d) else nn_.AvgPool2d
        twin = make(layer.kernel_size, layer.stride, layer.padding)
    elif isinstance(layer, (own.BatchNorm1d, own.BatchNorm2d)):
        make = nn_.BatchNorm1d if isinstance(layer, own.BatchNorm1d) else nn_.BatchNorm2d
        twin = make(layer.num_features, layer.eps, layer.momentum)
    elif isinstance(layer, own.LocalResponseNorm):
        twin = nn_.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
    elif isinstance(layer, own.AdaptiveAvgPool2d):
        twin = nn_.AdaptiveAvgPool2d(layer.output_size)
    elif isinstance(layer, own.Dropout):
        twin = nn_.Dropout(layer.p)
    elif isinstance(layer, own.LeakyReLU):
        twin = nn_.LeakyReLU(layer.slope)
    else:
        simple = {own.ReLU: nn_.ReLU, own.Tanh: nn_.Tanh, own.Sigmoid: nn_.Sigmoid,
                  own.Flatten: nn_.Flatten}
        if type(layer) not in simple:
            raise TypeError(f"torch_twin: no PyTorch twin for {type(layer).__name__}")
        twin = simple[type(layer)]()
    state = {k: torch.from_numpy(numpy.asarray(v, numpy.float32) if v.dtype.kind == "f" else v)
             for k, v in layer.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin


def _input_padded_conv(torch, layer):
    """A PyTorch ``Conv2d`` class whose padding, as ``layer``'s, depends on the input
    (``padding_for``: LeNet-5's first convolution pads 28x28 input to 32x32)."""
    class InputPaddedConv2d(torch.nn.Conv2d):
        def forward(self, x):
            return torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride,
                                              layer.padding_for(x), self.dilation, self.groups)
    return InputPaddedConv2d


def torch_model(net: str, torch):
    """PyTorch's twin of a fresh ``models.<net>()`` (see :func:`torch_twin`)."""
    make, _, _ = STEP_WORKLOADS[net]
    return torch_twin(make().to("cpu", dtype="float32"), torch)


def import_torch():
    """PyTorch, or ``None`` where it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_unusable(device: str) -> str | None:
    """Why the installed PyTorch cannot run on ``device``, or ``None`` (also when
    PyTorch is missing: its column is then empty). Its CPU build, what ``make test``
    installs, cannot use a GPU ("Torch not compiled with CUDA enabled")."""
    torch = import_torch()
    if torch is None or not device.startswith("cuda") or torch.cuda.is_available():
        return None
    build = "a CPU build" if torch.version.cuda is None else "no GPU it can use"
    return (f"the PyTorch column is skipped: PyTorch {torch.__version__} is {build} "
            f"(install a CUDA build of PyTorch to compare on {device})")



def cuda_torch():
    """PyTorch when it can use the GPU (the cuDNN columns), else ``None``; cuDNN
    picks its fastest algorithm per shape, and TF32 is off as in gpunet (a caller
    timing TF32 turns it on for both)."""
    torch = import_torch()
    if torch is None or not torch.cuda.is_available():
        return None
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return torch
