"""The IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed).

Layout, big-endian: two zero bytes, a type code, the number of dimensions ``d``,
``d`` 4-byte sizes, then the data in row-major order.
"""
from __future__ import annotations

import gzip
import os
import zlib

import numpy

from .errors import DatasetError

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's (decompressed, for ``.gz``) contents; a truncated or corrupt gzip
    stream raises :class:`DatasetError`."""
    path = os.fspath(path)
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DatasetError(f"{path}: cannot read: {exc}") from None


def parse_idx(data: bytes, name: str = "<bytes>") -> numpy.ndarray:
    """The array an IDX byte string holds, checked against its header."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise DatasetError(f"{name}: bad magic number {data[:4].hex() or 'empty'}: "
                           "not an IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DatasetError(f"{name}: header is truncated ({len(data)} bytes, "
                           f"{ndim} dimensions)")
    shape = tuple(int(s) for s in numpy.frombuffer(data, ">u4", ndim, 4))
    dtype = numpy.dtype(_TYPES[data[2]])
    expected = header + int(numpy.prod(shape, dtype=numpy.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetError(f"{name}: wrong size: the header announces shape {shape} "
                           f"({expected} bytes) but the file holds {len(data)} bytes")
    return numpy.frombuffer(data, dtype, offset=header).reshape(shape).astype(
        dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> numpy.ndarray:
    return parse_idx(read_bytes(path), os.fspath(path))
