"""Layers with explicit ``forward``/``backward``; PyTorch names and state-dict keys."""
from . import utils  # clip_grad_norm_, clip_grad_value_ (torch.nn.utils)
from .activation import Flatten, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .containers import ModuleDict, ModuleList
from .conv2d import Conv2d
from .dropout import Dropout
from .linear import Linear
from .module import Module, Parameter, Sequential
from .normalization import (
    BatchNorm1d,
    BatchNorm2d,
    LocalResponseNorm,
    SyncBatchNorm,
    convert_sync_batchnorm,
)
from .pool2d import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .residual import BasicBlock

__all__ = [
    "AdaptiveAvgPool2d", "AvgPool2d", "BasicBlock", "BatchNorm1d", "BatchNorm2d", "Conv2d",
    "Dropout", "Flatten", "LeakyReLU", "Linear", "LocalResponseNorm", "MaxPool2d", "Module",
    "ModuleDict", "ModuleList", "Parameter", "ReLU", "Sequential", "Sigmoid", "Softmax",
    "SyncBatchNorm", "Tanh", "convert_sync_batchnorm", "utils",
]
