"""Vanishing and exploding activations in a deep linear network (the notes' example).

g(z) = z, b = 0 and every W = 1.5 I (or 0.5 I): after L layers the activation is
1.5^L x (or 0.5^L x), growing or shrinking exponentially with depth.

    python examples/vanishing_exploding.py --quick
"""
import argparse
import os

import numpy

import gpunet
from gpunet import nn


def activations_by_depth(scale: float, depth: int) -> list[float]:
    """Mean |activation| after each layer of a depth-``depth`` linear net."""
    layers = [nn.Linear(2, 2, init=lambda s, fi, fo, r: numpy.eye(2) * scale)
              for _ in range(depth)]
    a = numpy.ones((1, 2), dtype=numpy.float64)
    sizes = []
    for layer in layers:
        a = layer.to(dtype="float64")(a)
        sizes.append(float(numpy.abs(a).mean()))
    return sizes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--out", default="runs/examples")
    args = parser.parse_args()
    gpunet.set_device("cpu")
    depth = 20 if args.quick else args.depth

    grow, shrink = activations_by_depth(1.5, depth), activations_by_depth(0.5, depth)
    print("layer  W = 1.5 I      W = 0.5 I")
    for layer in (1, 2, 5, 10, depth):
        print(f"{layer:5d}  {grow[layer - 1]:12.4e}  {shrink[layer - 1]:12.4e}")
    print(f"after {depth} layers: 1.5^{depth} = {1.5 ** depth:.4e}, 0.5^{depth} = "
          f"{0.5 ** depth:.4e}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    os.makedirs(args.out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(range(1, depth + 1), grow, label="W = 1.5 I (explodes)")
    ax.semilogy(range(1, depth + 1), shrink, label="W = 0.5 I (vanishes)")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean |activation|")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(args.out, "vanishing_exploding.png")
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
