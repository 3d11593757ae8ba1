"""Vertical and horizontal edge detection with the notes' 3x3 filters, on a real
photograph (Grace Hopper, shipped with matplotlib).

Vertical filter [[1,0,-1]]*3: bright-to-dark from left to right gives positive
outputs; the horizontal filter (its transpose) does the same from top to bottom.

    python examples/edge_detection.py --quick
"""
import argparse
import os

import numpy

from gpunet import ops

VERTICAL = numpy.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], dtype=numpy.float32)
HORIZONTAL = VERTICAL.T.copy()


def load_photo():
    import matplotlib.cbook
    import matplotlib.pyplot as plt
    rgb = plt.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return (rgb.astype(numpy.float32) @ [0.299, 0.587, 0.114]).astype(numpy.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="runs/examples")
    args = parser.parse_args()
    try:
        grey = load_photo()
    except ImportError:
        raise SystemExit("this example needs matplotlib for its photo: pip install matplotlib") \
            from None
    if args.quick:
        grey = grey[::4, ::4]
    vertical = ops.correlate2d(grey, VERTICAL)      # what Conv2d computes
    horizontal = ops.correlate2d(grey, HORIZONTAL)
    print(f"image {grey.shape}, edge maps {vertical.shape} (valid: n - f + 1)")
    for name, edges in (("vertical", vertical), ("horizontal", horizontal)):
        strong = numpy.abs(edges) > 3 * numpy.abs(edges).std()
        print(f"{name:10s} edges: {strong.mean():6.1%} of pixels strong, "
              f"range [{edges.min():.0f}, {edges.max():.0f}]")
    # a textbook convolution flips the kernel: for these antisymmetric filters it
    # only changes the sign
    assert numpy.allclose(ops.convolve2d(grey, VERTICAL), -vertical, atol=1e-2)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(args.out, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(12, 5))
    for ax, image, title in zip(axes, (grey, vertical, horizontal),
                                ("photo", "vertical edges", "horizontal edges")):
        ax.imshow(image if title == "photo" else numpy.abs(image), cmap="gray")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    path = os.path.join(args.out, "edges.png")
    fig.savefig(path, dpi=80)
    print(f"picture: {path}")


if __name__ == "__main__":
    main()
