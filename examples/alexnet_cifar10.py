"""An AlexNet-style network on CIFAR-10, with crop-and-flip augmentation.

Uses the real CIFAR-10 when it is found (see gpunet.data.load_cifar10); otherwise a
synthetic stand-in of the same shape, and says so.

    python examples/alexnet_cifar10.py --quick
"""
import argparse
import os

import gpunet
from gpunet import losses, models, optim
from gpunet.data import DatasetError, load_cifar10, synthetic_images, transforms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data-root", help="the folder holding CIFAR-10's batches "
                        "(default: gpunet's usual places, see gpunet.data.load_cifar10)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto "
                        "(default: $GPUNET_DEVICE, else auto)")
    args = parser.parse_args()
    try:  # now, in one line: not as a traceback from the first layer that needs it
        gpunet.set_device(args.device) if args.device else gpunet.get_device()
    except (gpunet.DeviceError, ValueError) as exc:
        given = f"--device {args.device}" if args.device else \
            f"GPUNET_DEVICE={os.environ.get('GPUNET_DEVICE')}"
        parser.exit(2, f"{parser.prog}: error: {given}: "
                       f"{str(exc).removeprefix('GPUNET_DEVICE: ')}\n")

    gpunet.manual_seed(0)
    try:
        (x, y), (x_test, y_test) = load_cifar10(args.data_root)
        source = "CIFAR-10"
    except DatasetError as exc:
        print(f"CIFAR-10 not found ({str(exc)[:80]}...): using synthetic 32x32x3 data instead")
        (x, y), (x_test, y_test) = synthetic_images(5000, 1000, shape=(3, 32, 32))
        source = "synthetic data"
    epochs = args.epochs
    if args.quick:
        x, y, x_test, y_test, epochs = x[:512], y[:512], x_test[:256], y_test[:256], 1
    x, x_test = transforms.to_float(x), transforms.to_float(x_test)
    stats = transforms.Standardize().fit(x)
    x, x_test = stats(x), stats(x_test)

    model = models.alexnet_cifar(dropout=0.3)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    schedule = optim.schedules.StepDecay(optimizer, step_size=5, gamma=0.3)
    gpunet.fit(model, losses.SoftmaxCrossEntropy(), optimizer, (x, y), epochs, 64,
               val_data=(x_test, y_test), schedule=schedule,
               augment=lambda batch: transforms.augment(batch, crop_padding=4))
    scores = gpunet.evaluate(model, (x_test, y_test))
    print(f"alexnet_cifar on {source}: test accuracy {scores['accuracy']:.4f}")


if __name__ == "__main__":
    main()
