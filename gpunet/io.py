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
import math
import os
import secrets
import zipfile

import numpy
from numpy.lib import format as npformat

from .backend import get_rng_state, set_rng_state, to_numpy
from .nn import Conv2d, Linear, Module
from .nn.normalization import _BatchNorm  # SyncBatchNorm too

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
                               "steps": state["steps"], "count": len(state["state"]),
                               "param_groups": state.get("param_groups")}
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
    # created as open() creates files (0666 less the umask), not mkstemp's private 0600
    tmp = os.path.join(folder, f".tmp-{secrets.token_hex(8)}.npz")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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
    except OSError as exc:
        # the temporary file is our business, not the user's: name the target, and
        # whether an earlier checkpoint there survived (the rename never happened)
        kept = (f"; the earlier {path} is unchanged" if os.path.exists(path)
                else f"; nothing was written to {path}")
        error = OSError(f"cannot save {path}: {exc.strerror or exc}{kept}")
        error.errno = exc.errno
        raise error from None
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> numpy.ndarray:
    """One ``.npy`` member, its header checked against its size *before* any data is
    read, so a crafted shape such as ``[2**40]`` allocates nothing."""
    with archive.open(info) as f:
        version = npformat.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise CheckpointError(f"member {info.filename!r}: unsupported .npy version "
                                  f"{version}")
        reader = npformat.read_array_header_1_0 if version == (1, 0) else \
            npformat.read_array_header_2_0
        shape, fortran, dtype = reader(f, max_header_size=10000)
        if dtype.hasobject:
            raise CheckpointError(f"member {info.filename!r}: object arrays are refused "
                                  "(they would need pickle)")
        if any(not isinstance(d, int) or d < 0 for d in shape):
            raise CheckpointError(f"member {info.filename!r}: malformed shape {shape}")
        expected = math.prod(shape) * dtype.itemsize
        available = info.file_size - f.tell()
        if expected != available:
            raise CheckpointError(
                f"member {info.filename!r}: header says shape {shape} of {dtype} "
                f"({expected} bytes) but the member holds {available} bytes")
        data = f.read(available)
        if len(data) != available:
            raise CheckpointError(f"member {info.filename!r}: truncated")
    array = numpy.frombuffer(data, dtype=dtype)
    return array.reshape(shape, order="F" if fortran else "C")


def read_checkpoint(path) -> tuple[dict, dict]:
    """``(header, arrays)`` of a checkpoint, verified; any defect raises
    :class:`CheckpointError` naming the file and the problem, and nothing from the
    file is executed or trusted before it is checked."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        arrays = _read_archive(path)
        header = _read_header(arrays.pop("__meta__", None))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: every failure is "corrupt"
        raise CheckpointError(f"{path}: not a readable checkpoint "
                              f"({type(exc).__name__}: {exc})") from None
    if _digest(arrays) != header.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch: the arrays were altered or "
                              "truncated after saving")
    return header, arrays


_PYTORCH_FILE = (
    "a PyTorch file (torch.save), not a gpunet checkpoint: convert it with PyTorch "
    "installed, model.load_state_dict(torch.load(path, map_location='cpu')) on the same "
    "gpunet model (the keys are PyTorch's), then gpunet.save(new_path, model)")


def _read_archive(path) -> dict:
    arrays = {}
    with open(path, "rb") as f:
        if f.read(1) == b"\x80":  # a pickle: PyTorch's legacy format, never unpickled here
            raise CheckpointError(_PYTORCH_FILE)
    with open(path, "rb") as f, zipfile.ZipFile(f) as archive:
        members = archive.infolist()
        names = [m.filename for m in members]
        if len(set(names)) != len(names):
            raise CheckpointError("duplicate member names")
        if sum(m.file_size for m in members) > os.path.getsize(path) * 1100 + 2**20:
            raise CheckpointError("members declare far more data than the file holds")
        if any(n.endswith("data.pkl") for n in names):
            raise CheckpointError(_PYTORCH_FILE)
        for info in members:
            if not info.filename.endswith(".npy"):
                raise CheckpointError(f"unexpected member {info.filename!r}")
            arrays[info.filename[:-4]] = _read_member(archive, info)
    return arrays


def _read_header(meta) -> dict:
    if meta is None:
        raise CheckpointError("no __meta__ member: not a gpunet checkpoint")
    if meta.dtype != numpy.uint8 or meta.ndim != 1:
        raise CheckpointError("__meta__ is not a byte string")
    try:
        header = json.loads(meta.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"malformed metadata ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise CheckpointError(f"unknown format {found!r}, expected {FORMAT!r}")
    optimizer = header.get("optimizer")
    if optimizer is not None and not (
            isinstance(optimizer, dict) and isinstance(optimizer.get("class"), str)
            and isinstance(optimizer.get("hyperparameters"), dict)
            and isinstance(optimizer.get("steps"), int)
            and isinstance(optimizer.get("count"), int)):
        raise CheckpointError("malformed optimizer metadata")
    if not isinstance(header.get("meta", {}), dict):
        raise CheckpointError("malformed metadata: meta is not a mapping")
    return header


def _fold_biases_before_batch_norm(model: Module, state: dict) -> list[str]:
    """Take into ``state``'s running means the biases that checkpoints of older gpunet
    versions hold for a conv or linear layer right before a batch norm (the layer has
    none now); returns their keys. Exact: the norm subtracts the mean either way, in
    training the batch's, in eval the running one, which then holds ``+ bias``."""
    folded = []
    for prefix, parent in model.named_modules():
        children = list(parent.named_children())
        for (name, layer), (norm_name, norm) in zip(children, children[1:]):
            key = f"{prefix}.{name}.bias".lstrip(".")
            mean_key = f"{prefix}.{norm_name}.running_mean".lstrip(".")
            if (isinstance(layer, (Conv2d, Linear)) and layer.bias is None
                    and isinstance(norm, _BatchNorm) and key in state
                    and mean_key in state
                    and numpy.shape(state[key]) == numpy.shape(state[mean_key])):
                bias = numpy.asarray(state.pop(key))
                state[mean_key] = numpy.asarray(state[mean_key]) - bias
                folded.append(key)
    return folded


def load(path, model: Module, optimizer=None, restore_rng: bool = True) -> dict:
    """Load a checkpoint into ``model`` (and ``optimizer``); returns the saved meta.

    With ``restore_rng`` the random streams continue where the saved run was, so
    a resumed run matches an uninterrupted one.
    """
    header, arrays = read_checkpoint(path)
    state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    folded = _fold_biases_before_batch_norm(model, state)
    if folded and optimizer is not None:
        raise CheckpointError(
            f"{os.fspath(path)}: saved by an older gpunet with a bias before each batch norm "
            f"({', '.join(folded)}), which models no longer have: its weights load (gpunet "
            "evaluate works), its optimizer state does not fit; start a new run")
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
                if not index.isdigit() or int(index) >= len(slots):
                    raise CheckpointError(f"{os.fspath(path)}: stray optimizer member {key!r}")
                slots[int(index)][slot] = value
        try:
            optimizer.load_state_dict({"hyperparameters": saved["hyperparameters"],
                                       "param_groups": saved.get("param_groups"),
                                       "steps": saved["steps"], "state": slots})
        except ValueError as exc:
            raise CheckpointError(f"{os.fspath(path)}: {exc}") from None
    if restore_rng and "rng" in header:
        try:
            set_rng_state(header["rng"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{os.fspath(path)}: malformed RNG state ({exc})") from None
    return header.get("meta", {})
