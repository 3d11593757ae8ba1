"""gpunet's settings: the one module that reads the ``GPUNET_*`` environment variables.

:data:`VARIABLES` is the table: each setting's variable, how its text is read, its
value when unset (or empty) and what it does. ``get("kernels")`` is a setting's value:
the one given in Python (:func:`update`, or :func:`override` for a ``with`` block) if
any, else its variable's. A bad value is a ``ValueError`` of one line naming the
variable, what it takes and what it got::

    with gpunet.config.override(kernels=False):   # CuPy arrays take the xp path here
        model(x)

Nothing here is read at import (the backend takes ``GPUNET_DEVICE`` once at its own,
as API.md says, and keeps a bad value's error for the first use): a bad value breaks
only what uses it (the CLI checks them all first, :func:`check_environment`, and
``--help`` still works). Most are read at each lookup, so that whoever changes
``os.environ`` in the process (the tests' ``monkeypatch.setenv``, the CLI run
in-process, a tuning trial) is seen at once with nothing to reset: they are looked up
once per command or run. The four that every op or kernel launch consults (``cached``
in the table: kernels, cpu_accel, allow_tf32, poison) are read at their first lookup
and kept, as they were before this module: reading ``os.environ`` costs more than a
small op's own Python (a missing key raises inside it). :func:`reload` reads them again.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from . import _checks

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_DEVICE = re.compile(r"(auto|cpu|cuda|cuda:\d+)")


def _flag(name: str, text: str) -> bool:
    # ``== "1"`` once took ``true`` as off without a word: every spelling, or an error
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError(f"{name}: expected 1/0, true/false, yes/no or on/off, got {text!r}")


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {text!r}")
    return value


def _device(name: str, text: str) -> str:
    # the spellings of backend.set_device, checked here so that the CLI refuses a bad
    # one before it starts; which devices exist is the backend's to say, at first use
    if not _DEVICE.fullmatch(text.strip().lower()):
        raise ValueError(f"{name}: expected 'cpu', 'cuda', 'cuda:N' or 'auto', got {text!r}")
    return text.strip()


def _text(name: str, text: str) -> str:
    return text


_PARSERS: dict[str, Callable[[str, str], object]] = {
    "flag": _flag, "count": _positive_int, "device": _device, "text": _text}


@dataclass(frozen=True)
class Variable:
    """One setting: ``name`` is its environment variable, ``kind`` how its text is
    read (:data:`_PARSERS`: a bad one is a ``ValueError`` naming the variable),
    ``default`` stands for unset or empty."""

    name: str
    kind: str
    default: object
    doc: str
    cached: bool = False  # read at the first lookup and kept until reload()

    def parse(self, text: str) -> object:
        """The value of the variable's text (its default when empty)."""
        return _PARSERS[self.kind](self.name, text) if text.strip() else self.default

    def accept(self, key: str, value) -> object:
        """A value given in Python for this setting, checked as its variable's text is
        (``None``, for a setting without a default, means "as if unset")."""
        if key == "device":  # the backend takes GPUNET_DEVICE once, at import (API.md)
            raise ValueError("device: not a setting to give here; call "
                             "gpunet.set_device(...) (GPUNET_DEVICE is read at import)")
        if self.kind == "flag":
            return _checks.boolean(key, value)
        if value is None and self.default is None:
            return None
        if self.kind == "count":
            return _checks.positive_int(key, value)
        if not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"{key}: expected a str, got {value!r}")
        return _PARSERS[self.kind](key, os.fspath(value))


VARIABLES = {
    "device": Variable("GPUNET_DEVICE", "device", "auto",
                       "cpu, cuda, cuda:N or auto: the device until set_device; the backend "
                       "takes it once, at import, the CLI and tune at each command"),
    "kernels": Variable("GPUNET_KERNELS", "flag", True,
                        "CuPy arrays go to the CUDA kernels (0: the xp path, to compare)",
                        cached=True),
    "cpu_accel": Variable("GPUNET_CPU_ACCEL", "flag", True,
                          "NumPy arrays go to gpunet.cpu (0: the textbook xp path)", cached=True),
    "allow_tf32": Variable("GPUNET_ALLOW_TF32", "flag", False,
                           "float32 convolutions may run on TF32 tensor cores (sm_80 on)",
                           cached=True),
    "poison": Variable("GPUNET_POISON", "flag", False,
                       "kernel outputs NaN-filled before each launch, so that an element "
                       "a kernel forgets to write shows up (the tests)", cached=True),
    "keep_freed_memory": Variable("GPUNET_KEEP_FREED_MEMORY", "flag", True,
                                  "fit and the CLI let glibc keep freed memory for reuse "
                                  "(backend.tune_cpu_allocator)"),
    "progress": Variable("GPUNET_PROGRESS", "flag", False,
                         "download progress bars even when stderr is not a terminal"),
    "traceback": Variable("GPUNET_TRACEBACK", "flag", False,
                          "the CLI lets a traceback through instead of its one line"),
    "num_threads": Variable("GPUNET_NUM_THREADS", "count", None,
                            "threads for gpunet's CPU ops (unset: the cores this process "
                            "may use); read when the thread pool is first needed"),
    "data": Variable("GPUNET_DATA", "text", None,
                     "a folder searched for datasets, as <folder>/<name>"),
    "cache": Variable("GPUNET_CACHE", "text", None,
                      "gpunet's cache folder (unset: ~/.cache/gpunet)"),
    "mirror": Variable("GPUNET_MIRROR", "text", None,
                       "the URL datasets are downloaded from, instead of their mirrors"),
}

# Values given in Python, by key. Replaced whole under the lock, never changed in
# place, so that a lookup needs no lock: it reads one reference.
_given: dict = {}  # what lookups read: _updated under _layers, rebuilt on a change
_updated: dict = {}  # update()'s settings
_layers: list = []  # the open override() blocks' settings, oldest first
_lock = threading.Lock()
_UNSET = object()
_read: dict = {}  # the environment's values of the cached settings, once read


def _variable(key: str) -> Variable:
    try:
        return VARIABLES[key]
    except KeyError:
        raise TypeError(f"config: expected a setting among {', '.join(VARIABLES)}, "
                        f"got {key!r}") from None


def from_environment(key: str):
    """Setting ``key`` as its environment variable says (its default when unset or
    empty), whatever was given in Python."""
    variable = _variable(key)
    return variable.parse(os.environ.get(variable.name, ""))


def is_set(key: str) -> bool:
    """Whether setting ``key``'s environment variable is set (and not empty)."""
    return bool(os.environ.get(_variable(key).name, "").strip())


def get(key: str):
    """Setting ``key``: the value given in Python, else its environment variable's."""
    value = _given.get(key, _UNSET)
    if value is _UNSET:
        value = _read.get(key, _UNSET)
    if value is _UNSET:
        value = from_environment(key)
        if VARIABLES[key].cached:
            _read[key] = value
    return value


def given() -> dict:
    """The settings given in Python (update and the open override blocks), by key: what
    a process started fresh (spawned) needs to run as this one does."""
    return dict(_given)


def reload() -> None:
    """Read the ``cached`` settings' variables again at their next lookup (after a
    change to ``os.environ``; the others are read at each lookup anyway)."""
    _read.clear()


def update(**values) -> None:
    """Give settings in Python, for the rest of the process (``update(kernels=False)``);
    they win over the environment. Inside an :func:`override` block of the same setting
    the value holds at once and until that block ends, which restores what held before
    it. ``gpunet.cuda.set_kernels_enabled`` and its siblings call this."""
    checked = {key: _variable(key).accept(key, value) for key, value in values.items()}
    with _lock:
        for key, value in checked.items():
            # inside an open block of the same setting: the newest such block's value, so
            # that it holds at once and goes when that block ends, as the block promises
            holder = next((layer for layer in reversed(_layers) if key in layer), _updated)
            holder[key] = value
        _merge()


@contextlib.contextmanager
def override(**values):
    """``with override(kernels=False): ...``: the settings hold inside the block, and
    what held before comes back on leaving it, by an exception too. Settings are the
    process's, seen by every thread (gpunet's worker threads among them). Each block
    is a layer of its own, the newest on top, and leaving a block takes away its layer
    wherever it is: blocks in two threads that overlap without nesting leave nothing
    behind once both have ended."""
    layer = {key: _variable(key).accept(key, value) for key, value in values.items()}
    with _lock:
        _layers.append(layer)
        _merge()
    try:
        yield
    finally:
        with _lock:
            # by identity: another block may hold an equal dict
            del _layers[next(i for i, held in enumerate(_layers) if held is layer)]
            _merge()


def _merge() -> None:
    """``_given``: the updates, under the open override blocks' layers (held _lock)."""
    global _given
    merged = dict(_updated)
    for layer in _layers:
        merged.update(layer)
    _given = merged


def check_environment(skip=()) -> None:
    """Every ``GPUNET_*`` variable reads (the first that does not: ``ValueError``),
    except the settings in ``skip``: the CLI checks them all before it starts,
    whichever its command uses, leaving out ``device`` where ``--device`` replaces it."""
    for key in VARIABLES:
        if key not in skip:
            from_environment(key)
