"""MNIST and Fashion-MNIST from IDX files, found or downloaded.

Search order for a dataset ``name``: ``root``, ``$GPUNET_DATA/<name>``,
``~/.cache/gpunet/<name>`` (``$GPUNET_CACHE`` overrides ``~/.cache/gpunet``),
``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist``), then a
download from the official mirror (``$GPUNET_MIRROR`` overrides it) into the cache.

Fashion-MNIST is verified by the SHA-256 of the *decompressed* files (Debian
re-gzips its copy, so the ``.gz`` digests differ); MNIST downloads by the MD5 of
the official ``.gz`` files, the digests its mirrors publish. A found MNIST file has
no digest of its decompressed bytes to check here (a copy gzipped again, as Debian
does, has another ``.gz`` MD5), but a file whose decompressed bytes are another known
dataset's file (the SHA-256s above) is refused naming that file, so a folder of
Fashion-MNIST is not taken for MNIST.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy

from .. import config
from .download import download, sha256
from .errors import DatasetError
from .idx import parse_idx, read_bytes

DEBIAN_ROOT = "/usr/share/datasets"


@dataclass(frozen=True)
class Resource:
    filename: str                    # without .gz
    sha256: str | None = None        # of the decompressed bytes
    gz_md5: str | None = None        # of the official .gz download


@dataclass(frozen=True)
class IdxDataset:
    name: str
    mirrors: tuple[str, ...]
    train_images: Resource
    train_labels: Resource
    test_images: Resource
    test_labels: Resource
    classes: int = 10

    @property
    def resources(self) -> tuple[Resource, ...]:
        return self.train_images, self.train_labels, self.test_images, self.test_labels


FASHION_MNIST = IdxDataset(
    "fashion-mnist", ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    Resource("train-images-idx3-ubyte",
             "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    Resource("train-labels-idx1-ubyte",
             "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    Resource("t10k-images-idx3-ubyte",
             "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    Resource("t10k-labels-idx1-ubyte",
             "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"))

MNIST = IdxDataset(
    "mnist", ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "http://yann.lecun.com/exdb/mnist/"),
    Resource("train-images-idx3-ubyte", gz_md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    Resource("train-labels-idx1-ubyte", gz_md5="d53e105ee54ea40749a09fcbcd1e9432"),
    Resource("t10k-images-idx3-ubyte", gz_md5="9fb629c4189551a2d022fa330f9573f3"),
    Resource("t10k-labels-idx1-ubyte", gz_md5="ec29112dd5afa0611ce80d1b7f02629c"))


# every dataset with digests, for naming a file found in the wrong place
KNOWN_DATASETS = (FASHION_MNIST, MNIST)


def cache_dir() -> str:
    return config.get("cache") or os.path.join(
        os.path.expanduser("~"), ".cache", "gpunet")


def search_folders(name: str, root=None) -> list[str]:
    """Where ``name`` is looked for, in order."""
    folders = [os.fspath(root)] if root is not None else []
    if config.get("data"):
        folders.append(os.path.join(config.get("data"), name))
    folders += [os.path.join(cache_dir(), name), os.path.join(DEBIAN_ROOT, name)]
    return folders


def _find(folder: str, resource: Resource) -> str | None:
    for candidate in (resource.filename, resource.filename + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def _locate(dataset: IdxDataset, root, resources=None) -> list[str]:
    """Paths of ``resources`` (of ``dataset``; ``None``: its four files) from the first
    folder holding all of them, else downloaded into the cache. An explicit ``root``
    must hold them: the user named that folder, so another copy found elsewhere would
    be silently wrong data."""
    resources = dataset.resources if resources is None else resources
    if root is not None:
        paths = [_find(os.fspath(root), r) for r in resources]
        if not all(paths):
            missing = [r.filename for r, p in zip(resources, paths) if p is None]
            raise DatasetError(f"{dataset.name}: {os.fspath(root)} does not hold "
                               f"{', '.join(missing)} (.gz or not)")
        return paths
    for folder in search_folders(dataset.name, root):
        paths = [_find(folder, r) for r in resources]
        if all(paths):
            return paths
    target = os.path.join(cache_dir(), dataset.name)
    mirrors = [config.get("mirror")] if config.get("mirror") else list(dataset.mirrors)
    paths = []
    for resource in resources:
        dest = os.path.join(target, resource.filename + ".gz")
        errors = []
        for mirror in mirrors:
            try:
                paths.append(download(mirror.rstrip("/") + "/" + resource.filename + ".gz",
                                      dest, md5=resource.gz_md5))
                break
            except DatasetError as exc:
                errors.append(str(exc))
        else:
            searched = ", ".join(search_folders(dataset.name, root))
            raise DatasetError(f"{dataset.name}: not found in {searched}, and the download "
                               f"failed: {'; '.join(errors)}")
    return paths


def _load(path: str, resource: Resource, dataset: IdxDataset) -> numpy.ndarray:
    data = read_bytes(path)
    # hashing the decompressed bytes takes a tenth of the time gunzip does
    digest = sha256(data)
    if resource.sha256 is not None and digest != resource.sha256:
        raise DatasetError(f"{path}: checksum mismatch: SHA-256 of the decompressed bytes is "
                           f"{digest}, expected {resource.sha256}{_known_as(digest)}")
    if resource.sha256 is None:
        known = _by_sha256(digest)
        if known is not None and known != (dataset.name, resource.filename):
            raise DatasetError(f"{path}: this is {known[0]}'s {known[1]} (by the SHA-256 of "
                               f"its bytes), not {dataset.name}'s {resource.filename}")
    return parse_idx(data, path)


def _by_sha256(digest: str) -> tuple[str, str] | None:
    """``(dataset name, file name)`` of the known file whose decompressed bytes hash to
    ``digest``."""
    for known in KNOWN_DATASETS:
        for r in known.resources:
            if r.sha256 == digest:
                return known.name, r.filename
    return None


def _known_as(digest: str) -> str:
    """``"; it is <dataset>'s <file>"`` when bytes of SHA-256 ``digest`` are a known
    file's, else ``""``."""
    known = _by_sha256(digest)
    return "" if known is None else f"; it is {known[0]}'s {known[1]}"


SPLITS = ("train", "test")


def _splits(split) -> tuple[str, ...]:
    """``None``: both splits; ``"train"`` or ``"test"``: that one."""
    if split is None:
        return SPLITS
    if split not in SPLITS:
        raise ValueError(f"split: expected 'train', 'test' or None (both), got {split!r}")
    return (split,)


def load_idx_dataset(dataset: IdxDataset, root=None, split=None):
    """``((x_train, y_train), (x_test, y_test))``: uint8 ``(N, 1, H, W)`` and int64;
    with ``split="train"`` or ``"test"`` that pair alone, and only its files are read
    (or downloaded)."""
    parts = _splits(split)
    pairs = {"train": (dataset.train_images, dataset.train_labels),
             "test": (dataset.test_images, dataset.test_labels)}
    paths = _locate(dataset, root, [r for part in parts for r in pairs[part]])  # all first
    out = []
    for i, part in enumerate(parts):
        pi, pl = paths[2 * i:2 * i + 2]
        images = _load(pi, pairs[part][0], dataset)
        labels = _load(pl, pairs[part][1], dataset)
        if images.ndim != 3 or images.dtype != numpy.uint8:
            raise DatasetError(f"{pi}: expected uint8 images (N, H, W), got "
                               f"{images.dtype} {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DatasetError(f"{pl}: {labels.shape[0] if labels.ndim else '?'} labels for "
                               f"{images.shape[0]} images in {pi}")
        if labels.size and int(labels.max()) >= dataset.classes:
            raise DatasetError(f"{pl}: label {int(labels.max())} is out of range for "
                               f"{dataset.classes} classes")
        out.append((images[:, None].copy(), labels.astype(numpy.int64)))
    return out[0] if split is not None else tuple(out)


def load_fashion_mnist(root=None, split=None):
    """Fashion-MNIST: 60,000 + 10,000 grey 28x28 images of 10 kinds of clothing
    (``split="train"`` or ``"test"``: that part alone)."""
    return load_idx_dataset(FASHION_MNIST, root, split)


def load_mnist(root=None, split=None):
    """MNIST: 60,000 + 10,000 grey 28x28 handwritten digits (``split="train"`` or
    ``"test"``: that part alone)."""
    return load_idx_dataset(MNIST, root, split)
