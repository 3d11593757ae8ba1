"""Checkpoints that cannot run code and are never half-written.

Format: an uncompressed ``.npz`` (a zip of ``.npy`` members, read with
``allow_pickle=False``) holding ``model/<key>`` and ``optimizer/<i>/<slot>``
arrays, plus ``__meta__``: UTF-8 JSON (as a uint8 array) with the format version,
the optimizer's class and hyperparameters, the RNG state, the caller's metadata
and a SHA-256 over every array, so flipped or missing bytes are reported.

Saving writes a temporary file in the target folder, fsyncs it, renames it over
the old checkpoint and fsyncs the folder: a crash leaves either the old or the
new checkpoint, never a mix.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile

import numpy

from .backend import get_rng_state, set_rng_state, to_numpy
from .nn import Module

__all__ = ["save", "load", "CheckpointError", "read_checkpoint"]

FORMAT = "gpunet-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, corrupt or does not fit the model."""


def _digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = numpy.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(path, model: Module, optimizer=None, **meta) -> str:
    """Write ``model`` (and ``optimizer``) with JSON-serialisable ``meta`` (epoch,
    history, schedule state, ...) to ``path`` atomically. Returns the path."""
    path = os.fspath(path)
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    header = {"format": FORMAT, "meta": meta, "rng": get_rng_state()}
    if optimizer is not None:
        state = optimizer.state_dict()
        header["optimizer"] = {"class": type(optimizer).__name__,
                               "hyperparameters": state["hyperparameters"],
                               "steps": state["steps"], "count": len(state["state"])}
        for i, slots in enumerate(state["state"]):
            for slot, value in slots.items():
                arrays[f"optimizer/{i}/{slot}"] = to_numpy(value)
    header["sha256"] = _digest(arrays)
    try:
        blob = json.dumps(header).encode()
    except TypeError as exc:
        raise TypeError(f"save: metadata must be JSON-serialisable: {exc}") from None
    arrays["__meta__"] = numpy.frombuffer(blob, dtype=numpy.uint8)

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            numpy.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def read_checkpoint(path) -> tuple[dict, dict]:
    """``(header, arrays)`` of a checkpoint, verified; raises :class:`CheckpointError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:  # our own handle: numpy.load leaks it when the zip is truncated
        with open(path, "rb") as f, numpy.load(f, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None
    if "__meta__" not in arrays:
        raise CheckpointError(f"{path}: no __meta__ member: not a gpunet checkpoint")
    try:
        header = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: malformed metadata ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {header.get('format')!r}, "
                              f"expected {FORMAT!r}")
    if _digest(arrays) != header.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch: the arrays were altered or "
                              "truncated after saving")
    return header, arrays


def load(path, model: Module, optimizer=None, restore_rng: bool = True) -> dict:
    """Load a checkpoint into ``model`` (and ``optimizer``); returns the saved meta.

    With ``restore_rng`` the random streams continue where the saved run was, so
    a resumed run matches an uninterrupted one.
    """
    header, arrays = read_checkpoint(path)
    state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(f"{os.fspath(path)}: {exc}") from None
    if optimizer is not None:
        saved = header.get("optimizer")
        if saved is None:
            raise CheckpointError(f"{os.fspath(path)}: holds no optimizer state")
        if saved["class"] != type(optimizer).__name__:
            raise CheckpointError(f"{os.fspath(path)}: optimizer is {saved['class']}, "
                                  f"cannot load into {type(optimizer).__name__}")
        slots = [{} for _ in range(saved["count"])]
        for key, value in arrays.items():
            if key.startswith("optimizer/"):
                _, index, slot = key.split("/", 2)
                slots[int(index)][slot] = value
        try:
            optimizer.load_state_dict({"hyperparameters": saved["hyperparameters"],
                                       "steps": saved["steps"], "state": slots})
        except ValueError as exc:
            raise CheckpointError(f"{os.fspath(path)}: {exc}") from None
    if restore_rng and "rng" in header:
        set_rng_state(header["rng"])
    return header["meta"]
