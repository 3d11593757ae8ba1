"""CIFAR-10 from its binary batches (``cifar-10-batches-bin``) or its python
batches (``cifar-10-batches-py``), without unpickling arbitrary objects.

The python batches are pickles of ``{b"data": uint8 ndarray (10000, 3072),
b"labels": [int]}``; they are read by an unpickler that can build NumPy arrays
and nothing else, so a crafted file cannot run code.
"""
from __future__ import annotations

import io
import os
import pickle

import numpy

from .datasets import _splits, search_folders
from .errors import DatasetError

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]
RECORD = 1 + 3 * 32 * 32

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


def load_cifar10(root=None, split=None):
    """``((x_train, y_train), (x_test, y_test))``: uint8 ``(N, 3, 32, 32)``, int64 labels;
    with ``split="train"`` or ``"test"`` that pair alone (only its batches are read)."""
    parts = _splits(split)
    names = {"train": TRAIN, "test": TEST}
    needed = [n for part in parts for n in names[part]]
    looked = []
    # an explicit root must hold the batches: no fallback to another copy
    for folder in [os.fspath(root)] if root is not None else search_folders("cifar10"):
        for sub, reader, suffix in (("cifar-10-batches-py", _read_python_batch, ""),
                                    ("cifar-10-batches-bin", _read_binary_batch, ".bin"),
                                    ("", _read_python_batch, ""),
                                    ("", _read_binary_batch, ".bin")):
            path = os.path.join(folder, sub)
            looked.append(path)
            if all(os.path.isfile(os.path.join(path, n + suffix)) for n in needed):
                out = [_read(path, names[part], reader, suffix) for part in parts]
                return out[0] if split is not None else tuple(out)
    raise DatasetError("cifar10: no CIFAR-10 batches (python or binary) found; looked in "
                       + ", ".join(dict.fromkeys(looked)))
