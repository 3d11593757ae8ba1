"""LeNet-5 (LeCun et al., 1998) and the notes' variant of it."""
from __future__ import annotations

from ..nn import (
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    Sequential,
)
from .scaling import init_for_what_feeds_each_layer


class InputConv(Conv2d):
    """LeNet-5's first convolution: 28x28 input (MNIST, Fashion-MNIST) gets
    ``padding=2``, i.e. is seen as the 32x32 input LeNet-5 was designed for."""

    def padding_for(self, x):
        # x is not checked yet (conv2d_forward does it): anything but an array gets its message
        return 2 if tuple(getattr(x, "shape", ())[-2:]) == (28, 28) else self.padding


def _lenet_layers(in_channels, first, num_classes, batch_norm) -> list[Module]:
    # No bias before a batch norm: the norm subtracts the batch mean, so its true
    # gradient is 0 and Adam would turn rounding noise into steps of +-lr.
    def conv_block(c_in, c_out, conv=Conv2d):
        block = [conv(c_in, c_out, 5, bias=not batch_norm)]
        block += [BatchNorm2d(c_out)] if batch_norm else []
        # pool -> ReLU: relu(max) = max(relu), on a quarter of the values
        return block + [MaxPool2d(2), ReLU()]

    def dense(n_in, n_out):
        return ([Linear(n_in, n_out, bias=not batch_norm)]
                + ([BatchNorm1d(n_out)] if batch_norm else []) + [ReLU()])

    return (conv_block(in_channels, first, InputConv) + conv_block(first, 16) + [Flatten()]
            + dense(16 * 5 * 5, 120) + dense(120, 84) + [Linear(84, num_classes)])


def lenet5(in_channels: int = 1, num_classes: int = 10, batch_norm: bool = False) -> Sequential:
    """Classic LeNet-5 with ReLU and max pooling: conv6@5x5, pool, conv16@5x5, pool,
    FC120, FC84, FC10 on 32x32 input, or 28x28 with padding 2 on the first conv
    (61,706 parameters for 1 channel and 10 classes). ``batch_norm=True`` adds
    batch norm after each conv and hidden FC, which then have no bias (as in
    torchvision: the norm's ``bias`` takes its place), 61,932 parameters. Keys match
    a ``torch.nn.Sequential``."""
    return init_for_what_feeds_each_layer(
        Sequential(*_lenet_layers(in_channels, 6, num_classes, batch_norm)))


def lenet5_notes(num_classes: int = 10) -> Sequential:
    """The notes' table: 32x32x3 input, conv8@5, pool, conv16@5, pool, 120, 84, 10.

    Its parameter counts are 608, 3,216, 48,120, 10,164 and 850 (62,958 in all);
    the notes print 208, 416, 48,001, 10,081 and 841, leaving out the input
    channels of each filter and miscounting the FC biases.
    """
    return init_for_what_feeds_each_layer(Sequential(*_lenet_layers(3, 8, num_classes, False)))
