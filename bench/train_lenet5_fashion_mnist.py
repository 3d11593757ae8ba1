"""Accuracy and time per epoch of LeNet-5 on Fashion-MNIST on this machine's CPU.

The target: >= 0.90 test accuracy within 10 epochs, and >= 0.85 after one. The
recipe: LeNet-5 with batch norm (``lenet5(batch_norm=True)``), inputs scaled to
[0, 1] and standardised, random horizontal flips (p = 0.5), Adam at 1e-3 decayed
by 0.8 per epoch, batch 64, all 60,000 training images. (Batch 128 without flips
and decay peaks at 0.899; see bench/README.md.)

    python bench/train_lenet5_fashion_mnist.py [--epochs 10] [--device cpu]

Writes ``bench/results/lenet5-fashion-mnist-<device>-<date>.json``.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess

import numpy

import gpunet
from gpunet import losses, models, optim
from gpunet.data import load_fashion_mnist, transforms
from gpunet.train import Callback


class TestAccuracy(Callback):
    """Test accuracy after every epoch (the target is stated on the test set)."""

    def __init__(self, test):
        self.test, self.scores = test, []

    def on_epoch_end(self, run):
        self.scores.append(gpunet.evaluate(run.model, self.test)["accuracy"])
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gamma", type=float, default=0.8,
                        help="exponential learning-rate decay per epoch")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--flip", type=float, default=0.5,
                        help="probability of a horizontal flip per training image")
    args = parser.parse_args()
    device = gpunet.set_device(args.device)
    gpunet.manual_seed(0)
    (x, y), (xt, yt) = load_fashion_mnist()
    x, xt = transforms.to_float(x), transforms.to_float(xt)
    stats = transforms.Standardize().fit(x)
    x, xt = stats(x), stats(xt)
    model = models.lenet5(batch_norm=True)
    tracker = TestAccuracy((xt, yt))
    optimizer = optim.Adam(model.parameters(), weight_decay=args.weight_decay)
    schedule = optim.schedules.ExponentialDecay(optimizer, args.gamma)
    history = gpunet.fit(model, losses.SoftmaxCrossEntropy(), optimizer, (x, y), args.epochs,
                         args.batch_size, schedule=schedule, callbacks=[tracker], progress=False,
                         augment=(lambda b: transforms.horizontal_flip(b, args.flip))
                         if args.flip else None)
    rows = [{"epoch": r["epoch"], "train_loss": round(r["loss"], 4),
             "test_accuracy": round(acc, 4), "seconds": round(r["time"], 1)}
            for r, acc in zip(history.rows, tracker.scores)]
    print("epoch  train loss  test accuracy  seconds")
    for r in rows:
        print(f"{r['epoch']:5d}  {r['train_loss']:10.4f}  {r['test_accuracy']:13.4f}  "
              f"{r['seconds']:7.1f}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    report = {"model": "lenet5(batch_norm=True)", "dataset": "fashion-mnist",
              "optimizer": f"Adam(lr=1e-3, weight_decay={args.weight_decay}), "
                                      f"ExponentialDecay(gamma={args.gamma})",
              "augmentation": f"horizontal flip p={args.flip}" if args.flip else "none",
              "batch_size": args.batch_size, "device": str(device),
              "machine": f"{platform.machine()} {os.cpu_count()} cores", "commit": commit,
              "numpy": numpy.__version__, "epochs": rows,
              "best_test_accuracy": max(tracker.scores),
              "first_epoch_at_0.90": next((r["epoch"] for r in rows
                                            if r["test_accuracy"] >= 0.90), None)}
    os.makedirs("bench/results", exist_ok=True)
    path = f"bench/results/lenet5-fashion-mnist-{device.name.replace(':', '')}-" \
           f"{datetime.date.today()}.json"
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
