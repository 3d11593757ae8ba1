"""Random hyperparameter search on a log scale, as the notes advise.

Sample r uniformly, then learning rate = 10**r (r in [-4, -1]) and momentum
beta = 1 - 10**r (r in [-3, -1], so beta in [0.9, 0.999]): equal effort per decade,
where a uniform draw of beta would spend 90% of the trials below 0.99.

    python examples/hyperparameter_search.py --quick
"""
import argparse

import numpy

import gpunet
from gpunet import losses, models, optim
from gpunet.data import DatasetError, load_fashion_mnist, synthetic_images, transforms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()

    try:
        (x, y), _ = load_fashion_mnist()
    except DatasetError:
        print("Fashion-MNIST not found: searching on synthetic data")
        (x, y), _ = synthetic_images(4000, 10, shape=(1, 28, 28))
    n, trials = (1500, 4) if args.quick else (12000, args.trials)
    (x_train, y_train), (x_dev, y_dev), _ = gpunet.data.train_dev_test_split(
        x[:n], y[:n], (0.8, 0.2, 0.0))
    stats = transforms.Standardize().fit(transforms.to_float(x_train))
    x_train, x_dev = (stats(transforms.to_float(a)) for a in (x_train, x_dev))

    rng = numpy.random.default_rng(0)
    results = []
    for trial in range(trials):
        lr = 10 ** rng.uniform(-4, -1)
        beta = 1 - 10 ** rng.uniform(-3, -1)
        gpunet.manual_seed(trial)
        model = models.lenet5()
        optimizer = optim.SGD(model.parameters(), lr=lr, momentum=beta)
        try:
            gpunet.fit(model, losses.SoftmaxCrossEntropy(), optimizer, (x_train, y_train),
                       1, 64, progress=False)
            accuracy = gpunet.evaluate(model, (x_dev, y_dev))["accuracy"]
        except gpunet.NonFiniteError:
            accuracy = float("nan")  # diverged: a result too
        results.append((accuracy, lr, beta))
        print(f"trial {trial + 1:2d}: lr {lr:.2e}  beta {beta:.4f}  dev accuracy {accuracy:.4f}")

    print("\nbest first:\n  rank  learning rate  momentum beta  dev accuracy")
    for rank, (accuracy, lr, beta) in enumerate(sorted(results, key=lambda r: -numpy.nan_to_num(
            r[0], nan=-1)), start=1):
        print(f"  {rank:4d}  {lr:13.2e}  {beta:13.4f}  {accuracy:12.4f}")


if __name__ == "__main__":
    main()
