"""Datasets (MNIST, Fashion-MNIST, CIFAR-10), splits, mini-batches and transforms."""
from . import transforms
from .batching import minibatches, train_dev_test_split
from .cifar import download_cifar10, load_cifar10
from .datasets import load_fashion_mnist, load_mnist
from .errors import DatasetError
from .idx import parse_idx, read_idx
from .synthetic import synthetic_images

__all__ = ["DatasetError", "download_cifar10", "load_cifar10", "load_fashion_mnist", "load_mnist",
           "minibatches", "parse_idx", "read_idx", "synthetic_images", "train_dev_test_split",
           "transforms"]
