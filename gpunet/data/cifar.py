"""CIFAR-10 from its binary batches (``cifar-10-batches-bin``) or its python
batches (``cifar-10-batches-py``), without unpickling arbitrary objects; found
where :func:`~.datasets.search_folders` looks, else downloaded.

The python batches are pickles of ``{b"data": uint8 ndarray (10000, 3072),
b"labels": [int]}``; they are read by an unpickler that can build NumPy arrays
and nothing else, so a crafted file cannot run code.

The download is the official ``cifar-10-python.tar.gz`` (``$GPUNET_MIRROR``
overrides the mirror), verified by its SHA-256 before anything is unpacked; only
the six batches are taken from it (never a path the archive names), written to a
temporary folder in the cache and renamed into place, and the archive removed.
"""
from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass

import numpy

from .. import config
from .datasets import _splits, cache_dir, search_folders
from .download import download
from .errors import DatasetError

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]
RECORD = 1 + 3 * 32 * 32


@dataclass(frozen=True)
class Archive:
    """A tar.gz of the python batches under ``folder/``, and where to fetch it."""
    filename: str
    sha256: str
    mirrors: tuple[str, ...]
    folder: str = "cifar-10-batches-py"


CIFAR10_ARCHIVE = Archive(
    "cifar-10-python.tar.gz",  # 170,498,071 bytes
    "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    ("https://www.cs.toronto.edu/~kriz/",))
HINT = ("put the batches under $GPUNET_DATA/cifar10 or pass their folder with --data-root "
        "(root= in Python)")

# What the format needs: NumPy's array reconstruction, and (for batches re-saved
# by Python 3 with protocol 2) _codecs.encode, which only turns a str into bytes.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def _read_python_batch(path):
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DatasetError(f"{path}: not a CIFAR-10 python batch: {exc}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{path}: expected a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, numpy.ndarray) or data.dtype != numpy.uint8 or \
            data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path}: data must be uint8 (N, 3072), got "
                           f"{getattr(data, 'dtype', type(data).__name__)} "
                           f"{getattr(data, 'shape', '')}")
    if not isinstance(labels, list) or len(labels) != data.shape[0] or \
            not all(isinstance(v, int) for v in labels):
        raise DatasetError(f"{path}: labels must be a list of {data.shape[0]} ints")
    return data.reshape(-1, 3, 32, 32), numpy.asarray(labels, dtype=numpy.int64)


def _read_binary_batch(path):
    with open(path, "rb") as f:
        raw = f.read()
    if not raw or len(raw) % RECORD:
        raise DatasetError(f"{path}: wrong size: {len(raw)} bytes is not a multiple of "
                           f"the {RECORD}-byte record")
    records = numpy.frombuffer(raw, numpy.uint8).reshape(-1, RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), records[:, 0].astype(numpy.int64)


def _read(folder, names, reader, suffix=""):
    parts = [reader(os.path.join(folder, name + suffix)) for name in names]
    x = numpy.concatenate([p[0] for p in parts])
    y = numpy.concatenate([p[1] for p in parts])
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DatasetError(f"{folder}: label {int(y.max())} is out of range for 10 classes")
    return x, y


def _unpack(archive_path: str, archive: Archive, target: str) -> None:
    """The batches of ``archive_path`` into ``target/archive.folder``: each member
    read by name and written by us (no path from the archive is ever used), in a
    temporary folder renamed into place when all are there."""
    tmp = tempfile.mkdtemp(prefix=".unpack-", dir=target)
    try:
        try:
            with tarfile.open(archive_path, "r:gz") as tar:
                for name in TRAIN + TEST:
                    try:
                        member = tar.getmember(f"{archive.folder}/{name}")
                    except KeyError:
                        raise DatasetError(f"{archive_path}: the archive has no "
                                           f"{archive.folder}/{name}") from None
                    source = tar.extractfile(member) if member.isfile() else None
                    if source is None:
                        raise DatasetError(f"{archive_path}: {archive.folder}/{name} is "
                                           "not a regular file")
                    with source, open(os.path.join(tmp, name), "wb") as out:
                        shutil.copyfileobj(source, out)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DatasetError(f"{archive_path}: not a readable tar.gz: {exc}") from None
        final = os.path.join(target, archive.folder)
        if os.path.isdir(final):  # an incomplete earlier copy in our own cache
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


def download_cifar10(archive: Archive = CIFAR10_ARCHIVE) -> str:
    """Fetch ``archive`` from ``$GPUNET_MIRROR`` (else its mirrors) into the cache,
    check its SHA-256 and unpack its batches; returns their folder. A failed
    download or checksum leaves nothing in the cache."""
    target = os.path.join(cache_dir(), "cifar10")
    mirrors = [config.get("mirror")] if config.get("mirror") else list(archive.mirrors)
    archive_path = os.path.join(target, archive.filename)
    errors = []
    for mirror in mirrors:
        try:
            download(mirror.rstrip("/") + "/" + archive.filename, archive_path,
                     sha256=archive.sha256)
            break
        except DatasetError as exc:
            errors.append(str(exc))
    else:
        raise DatasetError("; ".join(errors))
    try:
        _unpack(archive_path, archive, target)
    finally:
        os.unlink(archive_path)  # the batches are the cache; the archive would double it
    return os.path.join(target, archive.folder)


def _find_batches(folders, needed, looked):
    """``(path, reader, suffix)`` of the first folder holding every ``needed`` batch."""
    for folder in folders:
        for sub, reader, suffix in (("cifar-10-batches-py", _read_python_batch, ""),
                                    ("cifar-10-batches-bin", _read_binary_batch, ".bin"),
                                    ("", _read_python_batch, ""),
                                    ("", _read_binary_batch, ".bin")):
            path = os.path.join(folder, sub)
            looked.append(path)
            if all(os.path.isfile(os.path.join(path, n + suffix)) for n in needed):
                return path, reader, suffix
    return None


def load_cifar10(root=None, split=None, *, archive: Archive = CIFAR10_ARCHIVE):
    """``((x_train, y_train), (x_test, y_test))``: uint8 ``(N, 3, 32, 32)``, int64 labels;
    with ``split="train"`` or ``"test"`` that pair alone (only its batches are read).

    Looks in ``root`` alone when given; else in ``$GPUNET_DATA/cifar10``, the cache
    and ``/usr/share/datasets/cifar10``, then downloads ``archive`` (verified by its
    SHA-256; ``$GPUNET_MIRROR`` overrides its mirror) into the cache."""
    parts = _splits(split)
    names = {"train": TRAIN, "test": TEST}
    needed = [n for part in parts for n in names[part]]
    looked = []
    # an explicit root must hold the batches: no fallback to another copy, no download
    folders = [os.fspath(root)] if root is not None else search_folders("cifar10")
    found = _find_batches(folders, needed, looked)
    failure = ""
    if found is None and root is None:
        try:
            found = (download_cifar10(archive), _read_python_batch, "")
        except DatasetError as exc:
            failure = f"; the download failed: {exc}"
    if found is None:
        raise DatasetError("cifar10: no CIFAR-10 batches (python or binary) found; looked in "
                           + ", ".join(dict.fromkeys(looked)) + failure + "; " + HINT)
    path, reader, suffix = found
    out = [_read(path, names[part], reader, suffix) for part in parts]
    return out[0] if split is not None else tuple(out)
