"""Zeros, large random and He initialisation of the same network, trained alike.

Zeros: every hidden unit computes the same thing and receives the same gradient,
so they stay identical (symmetry is never broken). Large random weights (x10)
saturate/explode and train badly. He (variance 2 / fan_in) trains well.

    python examples/initialization.py --quick
"""
import argparse

import numpy

import gpunet
from gpunet import losses, nn, optim


def circles(n: int, seed: int = 0):
    """Two concentric rings: a classic problem no linear model solves."""
    rng = numpy.random.default_rng(seed)
    radius = numpy.where(rng.random(n) < 0.5, 1.0, 2.0)
    angle = rng.uniform(0, 2 * numpy.pi, n)
    x = numpy.stack([radius * numpy.cos(angle), radius * numpy.sin(angle)], axis=1)
    x += 0.15 * rng.standard_normal(x.shape)
    return x.astype(numpy.float32), (radius > 1.5).astype(numpy.int64)


def large(shape, fan_in, fan_out, rng):
    return rng.standard_normal(shape) * 10.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    gpunet.set_device("cpu")
    x, y = circles(1000)
    epochs = 40 if args.quick else 150

    print("init     loss at start  loss at end  accuracy  distinct hidden units")
    for name, init in (("zeros", "zeros"), ("large", large), ("he", "he")):
        gpunet.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 10, init=init), nn.ReLU(),
                              nn.Linear(10, 5, init=init), nn.ReLU(),
                              nn.Linear(5, 2, init=init))
        loss = losses.SoftmaxCrossEntropy()
        first = loss(model(x), y)
        history = gpunet.fit(model, loss, optim.SGD(model.parameters(), 0.1, momentum=0.9),
                             (x, y), epochs, 100, progress=False)
        weights = model[0].weight.data
        distinct = len({tuple(numpy.round(row, 6)) for row in weights})
        print(f"{name:6s}  {first:13.4g}  {history['loss'][-1]:11.4f}  "
              f"{gpunet.evaluate(model, (x, y))['accuracy']:8.3f}  {distinct:>10d} of 10")


if __name__ == "__main__":
    main()
