"""Random hyperparameter search on the right scales, as the notes advise, with gpunet.tune.

The learning rate is 10**r with r uniform in [-4, -1]; the momentum beta is 1 - 10**r
with r uniform in [-3, -1], so that 0.9 ... 0.999 gets equal effort per decade,
where a uniform draw of beta would spend 90% of the trials below 0.99. Trials run as
Optuna trials (pip install 'gpunet[tune]'); `gpunet tune` does the same from the
command line, with workers, --resume and --refine.

    python examples/hyperparameter_search.py --quick

A second run finds the first one's study in --out: --overwrite replaces it, and
`gpunet tune --resume --out runs/hyperparameter-search` continues it.
"""
import argparse
import sys

from gpunet import tune
from gpunet.data import DatasetError, load_fashion_mnist


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default="runs/hyperparameter-search")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the search an earlier run left in --out")
    args = parser.parse_args()
    if tune.Study(args.out).exists() and not args.overwrite:
        sys.exit(f"{args.out} holds the search of an earlier run: --overwrite replaces it, "
                 f"gpunet tune --resume --out {args.out} continues it")

    try:
        load_fashion_mnist()
        dataset = "fashion-mnist"
    except DatasetError:
        print("Fashion-MNIST not found: searching on synthetic data")
        dataset = "synthetic"
    space = [tune.log_uniform("lr", 1e-4, 1e-1),
             tune.one_minus_log_uniform("momentum", 0.9, 0.999)]
    limit, dev, trials = (1500, 300, 4) if args.quick else (12000, 2400, args.trials)
    try:
        study = tune.search(space, {"dataset": dataset, "optimizer": "momentum", "epochs": 1,
                                    "batch_size": 64, "limit": limit, "dev_size": dev},
                            out=args.out, trials=trials, workers=args.workers, pruner="none",
                            overwrite=args.overwrite)
    except (ImportError, ValueError) as exc:  # no Optuna; a setting gpunet train refuses
        sys.exit(f"hyperparameter_search: {exc}")
    print(study.table())
    print(f"best: {study.best_command()}")


if __name__ == "__main__":
    main()
