"""Gradient checking, as the notes teach it: check backprop against centred
differences at random initialisation, and see a planted bug light up.

    python examples/gradient_checking.py
"""
import numpy

import gpunet
from gpunet import losses, nn


class BuggyLinear(nn.Linear):
    """A Linear layer that doubles its weight gradient: the kind of slip gradcheck finds."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.weight.grad *= 2
        return dx


def small_cnn(last):
    # no bias before batch norm: its true gradient is 0, which no difference resolves
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding="same", bias=False), nn.BatchNorm2d(4),
                         nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), last)


def main():
    gpunet.set_device("cpu")
    gpunet.manual_seed(0)
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((4, 1, 8, 8))
    y = rng.integers(0, 3, 4)
    loss = losses.SoftmaxCrossEntropy()

    print("A correct model, with L2 regularisation included (weight_decay=1e-2):")
    report = gpunet.gradcheck(small_cnn(nn.Linear(64, 3)), loss, x, y, weight_decay=1e-2)
    print(report, end="\n\n")

    print("The same model with a planted bug in the last layer's weight gradient:")
    buggy = gpunet.gradcheck(small_cnn(BuggyLinear(64, 3)), loss, x, y)
    print(buggy, end="\n\n")
    print(f"worst array: {buggy.worst.name} (relative error {buggy.worst.rel_error:.1e}); "
          "look at that component first.")
    return 0 if report.passed and not buggy.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
