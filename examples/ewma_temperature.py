"""Exponentially weighted moving averages of a year of daily temperatures.

beta = 0.9 averages over about 10 days, 0.98 over about 50 (smooth but late),
0.5 over about 2 (noisy). Without bias correction the first values start near 0;
dividing by 1 - beta^t fixes that.

    python examples/ewma_temperature.py --quick
"""
import argparse
import os

import numpy

import gpunet


def temperatures(days: int = 365, seed: int = 0) -> numpy.ndarray:
    """A London-like year in degrees F: a seasonal swing plus daily noise."""
    rng = numpy.random.default_rng(seed)
    t = numpy.arange(days)
    return 50 - 15 * numpy.cos(2 * numpy.pi * (t - 15) / 365) + 4 * rng.standard_normal(days)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="runs/examples")
    args = parser.parse_args()
    theta = temperatures()

    print("day  temperature   " + "  ".join(f"b={b} raw / corrected" for b in (0.5, 0.9, 0.98)))
    curves = {b: (gpunet.ewma(theta, b, bias_correction=False), gpunet.ewma(theta, b))
              for b in (0.5, 0.9, 0.98)}
    for day in (1, 2, 5, 10, 50, 180):
        cells = "  ".join(f"{curves[b][0][day - 1]:8.1f} / {curves[b][1][day - 1]:6.1f}"
                          for b in curves)
        print(f"{day:3d}  {theta[day - 1]:11.1f}   {cells}")
    for b in curves:
        roughness = numpy.abs(numpy.diff(curves[b][1])).mean()
        print(f"beta {b}: averages ~{1 / (1 - b):.0f} days, mean day-to-day change "
              f"{roughness:.2f} F")
    if args.quick:
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    os.makedirs(args.out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(theta, ".", color="grey", markersize=3, label="daily temperature")
    for b, color in zip(curves, ("gold", "red", "green")):
        ax.plot(curves[b][1], color=color, label=f"beta {b}")
        ax.plot(curves[b][0], color=color, linestyle=":", alpha=0.6)
    ax.set_xlabel("day")
    ax.set_ylabel("degrees F")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(args.out, "ewma.png")
    fig.savefig(path, dpi=100)
    print(f"plot: {path} (dotted: without bias correction)")


if __name__ == "__main__":
    main()
