"""Train LeNet-5 (with batch norm) on Fashion-MNIST and report test accuracy.

    python examples/train_lenet_fashion_mnist.py            # 10 epochs, about 3 minutes on 2 cores
    python examples/train_lenet_fashion_mnist.py --quick    # 6,000 images, 1 epoch, seconds
"""
import argparse
import os

import gpunet
from gpunet import losses, models, optim
from gpunet.data import load_fashion_mnist, train_dev_test_split, transforms

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="runs/lenet-fashion-mnist")
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
    (x, y), (x_test, y_test) = load_fashion_mnist()
    epochs = args.epochs
    if args.quick:
        x, y, x_test, y_test, epochs = x[:6000], y[:6000], x_test[:2000], y_test[:2000], 1
    # validate on a dev set held out of the training images; the test set is looked at
    # once, at the end
    (x, y), (x_dev, y_dev), _ = train_dev_test_split(x, y, (0.9, 0.1, 0.0), seed=0)
    # scale to [0, 1], then standardise with the training set's statistics only
    x, x_dev, x_test = (transforms.to_float(a) for a in (x, x_dev, x_test))
    stats = transforms.Standardize().fit(x)
    x, x_dev, x_test = stats(x), stats(x_dev), stats(x_test)

    model = models.lenet5(batch_norm=True)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    history = gpunet.fit(model, losses.SoftmaxCrossEntropy(), optimizer, (x, y), epochs, 128,
                         val_data=(x_dev, y_dev))
    scores = gpunet.evaluate(model, (x_test, y_test))
    os.makedirs(args.out, exist_ok=True)
    try:
        history.plot(os.path.join(args.out, "curves.png"))
    except ImportError as exc:  # matplotlib is optional: the run itself does not need it
        print(f"no curves.png: {exc}")
    gpunet.save(os.path.join(args.out, "lenet5.npz"), model, optimizer, epoch=epochs)

    first = gpunet.to_device(x_test[:8], gpunet.get_device())  # where the model is
    predictions = gpunet.to_numpy(model.eval()(first)).argmax(axis=1)
    print("first test images:", ", ".join(f"{CLASSES[p]} ({'ok' if p == t else CLASSES[t]})"
                                          for p, t in zip(predictions, y_test[:8])))
    print(f"test accuracy: {scores['accuracy']:.4f}")


if __name__ == "__main__":
    main()
