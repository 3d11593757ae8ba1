"""``Parameter``, ``Module`` and ``Sequential``: explicit forward/backward, no tape.

A layer registers its parameters, buffers and submodules by assigning them as
attributes; ``state_dict`` keys follow PyTorch (``0.weight``, ``1.running_mean``).
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from typing import NamedTuple

import numpy

from .. import _checks
from ..backend import Device, device_of, get_array_module, resolve_device, to_device, to_numpy
from ..ops import cpu_scope


def _plain_array(value):
    """A PyTorch tensor as a NumPy array (detached: a parameter may require grad);
    anything else as it is, for to_device."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    return value


class IncompatibleKeys(NamedTuple):
    """What :meth:`Module.load_state_dict` returns, as PyTorch's ``_IncompatibleKeys``."""
    missing_keys: list[str]
    unexpected_keys: list[str]


class Parameter:
    """A learnable array ``data`` and the gradient ``grad`` accumulated into it.

    ``decay`` says whether L2 weight decay applies; by default weights (two or
    more axes) decay and biases/batch-norm vectors do not.
    """

    __slots__ = ("data", "grad", "name", "decay")

    def __init__(self, data, name: str | None = None, decay: bool | None = None):
        _checks.float_array("Parameter", "data", data)
        self.data = data
        # zeros, not zeros_like: fresh pages, untouched until written (a parameter built
        # under init.shapes_only() costs no memory)
        self.grad = get_array_module(data).zeros(data.shape, data.dtype)
        self.name = name
        self.decay = data.ndim > 1 if decay is None else bool(decay)

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return (f"Parameter(name={self.name!r}, shape={self.shape}, "
                f"dtype={self.data.dtype.name}, device={device_of(self.data)})")


class Module:
    """Base class of every layer and model.

    Subclasses call ``super().__init__()`` first, then assign ``Parameter``s,
    submodules and (through :meth:`register_buffer`) buffers as attributes, and
    implement ``forward(x)`` and ``backward(dy)``. ``backward`` returns the
    gradient with respect to the input and adds (``+=``) into each ``.grad``. A
    layer that can skip computing the input gradient takes ``backward(dy,
    input_grad=True)`` and returns ``None`` when it is ``False``, as the built-in
    layers do (:func:`backward_params`).
    """

    def __init__(self):
        object.__setattr__(self, "_param_names", [])
        object.__setattr__(self, "_buffer_names", [])
        object.__setattr__(self, "_module_names", [])
        object.__setattr__(self, "training", True)

    # -- registration ---------------------------------------------------------
    def __setattr__(self, name, value):
        if "_param_names" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning "
                f"attribute {name!r}")
        for names, kind in ((self._param_names, Parameter), (self._module_names, Module)):
            if isinstance(value, kind):
                if name not in names:
                    names.append(name)
            elif name in names:
                names.remove(name)
        if isinstance(value, Parameter) and value.name is None:
            value.name = name
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array) -> None:
        """A non-learnable array saved in ``state_dict`` and moved by ``to``."""
        if name not in self._buffer_names:
            self._buffer_names.append(name)
        setattr(self, name, array)

    # -- the computation -------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x)")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} must implement backward(dy)")

    def __call__(self, x):
        return self.forward(x)

    _ctx = None  # what forward saved for backward, in the built-in layers

    def _add_grads(self, backward_result, *params):
        """``dx`` from an op context's ``(dx, *parameter_grads)``, each gradient added
        into its parameter's ``.grad`` (a ``None`` parameter, say no bias, skipped)."""
        dx, *grads = backward_result
        for param, grad in zip(params, grads):
            if param is not None:
                param.grad += grad
        return dx

    def _saved(self):
        """What forward saved, handed to backward once: letting go of it here frees
        each layer's activations as backward passes it, not at the next forward."""
        ctx, self._ctx = self._ctx, None
        if ctx is None:
            raise RuntimeError(f"{type(self).__name__}.backward was called without a forward "
                               "before it (each forward feeds one backward)")
        return ctx

    # -- traversal ----------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name in self._module_names:
            yield name, getattr(self, name)

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(_join(prefix, name))

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def _named_members(self, attr: str) -> Iterator[tuple[str, object]]:
        for prefix, module in self.named_modules():
            for name in getattr(module, attr):
                yield _join(prefix, name), getattr(module, name)

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        yield from self._named_members("_param_names")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, object]]:
        yield from self._named_members("_buffer_names")

    # -- modes, gradients ------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad[...] = 0

    # -- state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, numpy.ndarray]:
        """``{dotted.name: NumPy array}`` of parameters and buffers (copies)."""
        state = {}
        for prefix, module in self.named_modules():  # PyTorch's order, module by module
            for name in module._param_names:
                state[_join(prefix, name)] = to_numpy(getattr(module, name).data).copy()
            for name in module._buffer_names:
                state[_join(prefix, name)] = to_numpy(getattr(module, name)).copy()
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays in (NumPy, CuPy or PyTorch tensors), cast to each entry's
        dtype and device; returns ``(missing_keys, unexpected_keys)`` as PyTorch.

        Missing or unexpected entries (with ``strict=True``), mis-shaped or
        unconvertible ones (always) raise ``ValueError`` listing every one, and then
        nothing is changed: every value is converted and checked before the first
        is written. With ``strict=False`` the keys both sides have are loaded and
        the others only reported. As in PyTorch, a batch-norm
        ``num_batches_tracked`` may be missing (older checkpoints): it is kept.
        """
        own = dict(self.named_parameters())
        own.update(self.named_buffers())
        problems = []
        missing = sorted(k for k in set(own) - set(state)
                         if not k.endswith("num_batches_tracked"))
        unexpected = sorted(set(state) - set(own))
        if missing and strict:
            problems.append(f"missing keys {missing}")
        if unexpected and strict:
            problems.append(f"unexpected keys {unexpected}")
        converted = {}
        for key in sorted(set(own) & set(state)):
            current = own[key].data if isinstance(own[key], Parameter) else own[key]
            try:
                value = to_device(_plain_array(state[key]), device_of(current))
            except Exception as exc:  # noqa: BLE001 - reported with the key, nothing written
                problems.append(f"{key}: cannot convert a {type(state[key]).__name__} "
                                f"({type(exc).__name__}: {exc})")
                continue
            if tuple(value.shape) != tuple(current.shape):
                problems.append(f"{key}: expected shape {tuple(current.shape)}, "
                                f"got {tuple(value.shape)}")
            converted[key] = value
        if problems:
            raise ValueError(f"load_state_dict({type(self).__name__}): " + "; ".join(problems))
        for key, value in converted.items():
            target = own[key]
            current = target.data if isinstance(target, Parameter) else target
            current[...] = value
        return IncompatibleKeys(missing, unexpected)

    def to(self, device: str | Device | None = None, dtype=None) -> Module:
        """Move (and/or cast to float32/float64) parameters, gradients and buffers."""
        if dtype is not None:
            dtype = numpy.dtype(dtype)
            if dtype.name not in _checks.FLOAT_DTYPES:
                raise TypeError(f"to: dtype must be float32 or float64, got {dtype.name}")
        target = None if device is None else resolve_device(device)

        def convert(a):
            if target is not None:
                a = to_device(a, target)
            if dtype is not None and a.dtype.kind == "f":
                a = a.astype(dtype, copy=False)
            return a

        for module in self.modules():
            for name in module._param_names:
                p = getattr(module, name)
                p.data, p.grad = convert(p.data), convert(p.grad)
            for name in module._buffer_names:
                object.__setattr__(module, name, convert(getattr(module, name)))
        return self

    # -- printing -------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = [f"  ({name}): " + repr(child).replace("\n", "\n  ")
                    for name, child in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ("\n" + "\n".join(children) + "\n)" if children else ")")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@functools.cache
def _takes_input_grad(cls) -> bool:
    return "input_grad" in inspect.signature(cls.backward).parameters


def backward_params(module: Module, dy) -> None:
    """``module.backward(dy)`` for the parameter gradients only: without the input
    gradient where the module can skip it (a model's first layer, whose input is
    the data, needs none)."""
    if _takes_input_grad(type(module)):
        module.backward(dy, input_grad=False)
    else:
        module.backward(dy)


class Sequential(Module):
    """Modules applied in order; ``backward`` runs them in reverse.

    Children are named ``"0"``, ``"1"``, ... as in ``torch.nn.Sequential``, or
    by the keys of a single dict argument (``Sequential({"features": ...})``).
    """

    def __init__(self, *modules: Module):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            for name, module in modules[0].items():
                self._add(str(name), module)
        else:
            for module in modules:
                self.append(module)

    def _add(self, name: str, module: Module) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"Sequential: {name!r} is a {type(module).__name__}, "
                            "expected a Module")
        if any(child is module for child in self.children()):
            # backward needs each forward's saved context, and a module keeps one
            raise ValueError(f"Sequential: the same {type(module).__name__} instance is added "
                             f"twice (as {name!r}); create a new layer for each position")
        setattr(self, name, module)

    def append(self, module: Module) -> Sequential:
        self._add(str(len(self)), module)
        return self

    def __len__(self) -> int:
        return len(self._module_names)

    def __iter__(self) -> Iterator[Module]:
        return self.children()

    def __getitem__(self, index):
        modules = list(self.children())
        if isinstance(index, slice):
            return Sequential(*modules[index])
        return modules[index]

    def forward(self, x):
        with cpu_scope(x):  # one BLAS limit for the whole pass instead of one per op
            for module in self:
                x = module.forward(x)
        return x

    def backward(self, dy, input_grad: bool = True):
        """Backward through the children in reverse; with ``input_grad=False`` the
        first layer skips the gradient with respect to the input (returns ``None``)."""
        modules = list(self)
        if not modules:
            return dy
        with cpu_scope(dy):
            for module in reversed(modules[1:]):
                dy = module.backward(dy)
            if input_grad:
                return modules[0].backward(dy)
            backward_params(modules[0], dy)
        return None
