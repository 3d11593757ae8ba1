"""Optimizers: the class holds hyperparameters and per-parameter state (a list
aligned with the parameters); the update rule is a pure function of arrays,
applied in place.

As in PyTorch, ``params`` is a list of parameters (or a Module) or a list of
parameter groups, dicts ``{"params": [...], "lr": ..., "weight_decay": ...}``
whose keys override the constructor's values for their parameters;
``optimizer.param_groups`` holds them. ``weight_decay`` (L2, the notes' ``lambda/m``)
adds ``weight_decay * W`` to the gradient of the parameters of its group whose
``decay`` is set: weights, not biases and batch-norm vectors (API.md; unlike
``torch.optim``, which decays whatever it is given). A group's ``weight_decay``
sets the rate per group; ``Parameter.decay = True`` decays a bias too.

On CuPy parameters (kernels enabled: not ``GPUNET_KERNELS=0``) each parameter's
update is one launch of kernels/optim.cu (``gpunet.cuda.optim``) with the same rule,
and ``zero_grad`` one launch for all gradients; the pure functions of
:mod:`gpunet.optim.updates` stay the reference, and run everywhere else.
"""
from __future__ import annotations

import numpy

from .. import _checks
from ..backend import device_of, to_device, to_numpy
from ..cuda import optim as cuda_optim
from ..nn.module import Module, Parameter
from .updates import (
    adam_update,
    adamw_update,
    decay_groups,
    l2_gradient,
    momentum_update,
    rmsprop_update,
    sgd_update,
)

__all__ = ["Optimizer", "SGD", "Momentum", "RMSProp", "Adam", "AdamW", "l2_gradient",
           "decay_groups"]


class Optimizer:
    """Base class. Subclasses name their hyperparameters in ``_hyper`` (checked per
    group by ``_check``), their state arrays in ``_slots`` and implement
    ``_update(w, g, state, group)``. ``opt.lr`` (any hyperparameter) reads the first
    group's value and sets every group's."""

    _hyper: tuple[str, ...] = ("lr", "weight_decay")
    _slots: tuple[str, ...] = ()
    _decoupled_decay = False  # True: _update applies weight_decay itself (AdamW)

    def __init__(self, params, defaults: dict):
        name = type(self).__name__
        if isinstance(params, Module):
            params = params.parameters()
        params = list(params)
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        groups = params if all(isinstance(g, dict) for g in params) else [{"params": params}]
        self.defaults = self._check(dict(defaults))
        self.param_groups: list[dict] = []
        self._overrides: list[set] = []  # the keys each group set itself
        seen = set()
        for i, given in enumerate(groups):
            if not isinstance(given, dict) or "params" not in given:
                raise TypeError(f"{name}: param_groups[{i}] must be a dict with 'params', "
                                f"got {given!r:.60}")
            unknown = sorted(set(given) - {"params"} - set(self._hyper))
            if unknown:
                raise ValueError(f"{name}: param_groups[{i}] has unknown keys {unknown}; "
                                 f"expected 'params' and any of {list(self._hyper)}")
            members = given["params"]
            members = members.parameters() if isinstance(members, Module) else \
                [members] if isinstance(members, Parameter) else list(members)
            for j, p in enumerate(members):
                where = f"params[{j}]" if len(groups) == 1 else f"param_groups[{i}]['params'][{j}]"
                if not isinstance(p, Parameter):
                    raise TypeError(f"{name}: {where} is a {type(p).__name__}, expected a "
                                    "Parameter")
                if id(p) in seen:
                    raise ValueError(f"{name}: {where} ({p.name or p.shape}) is in more than "
                                     "one parameter group")
                seen.add(id(p))
            overrides = {k: v for k, v in given.items() if k != "params"}
            group = self._check({**self.defaults, **overrides}, i if len(groups) > 1 else None)
            self.param_groups.append({"params": members, **group})
            self._overrides.append(set(overrides))
        self.params = [p for g in self.param_groups for p in g["params"]]
        if not self.params:
            raise ValueError(f"{name}: got an empty parameter list")
        self.state: list[dict] = [{} for _ in self.params]
        self.steps = 0
        self._zero_tables: dict = {}  # zero_grad's device tables (gpunet.cuda.optim)

    def _check(self, hyper: dict, group: int | None = None) -> dict:
        """``hyper`` validated (every value of ``_hyper``); a bad value's message names
        its group when there are several."""
        try:
            hyper["lr"] = _checks.non_negative("lr", hyper["lr"])
            hyper["weight_decay"] = _checks.non_negative("weight_decay", hyper["weight_decay"])
            self._check_more(hyper)
        except ValueError as exc:
            if group is None:
                raise
            raise ValueError(f"param_groups[{group}]: {exc}") from None
        return hyper

    def _check_more(self, hyper: dict) -> None:
        """Subclasses validate their own hyperparameters in place."""

    def __getattr__(self, name):
        # only reached when normal lookup fails: hyperparameters live in the groups
        if name in type(self)._hyper and "param_groups" in self.__dict__:
            return self.param_groups[0][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in type(self)._hyper and "param_groups" in self.__dict__:
            for group in self.param_groups:
                group[name] = value
        else:
            object.__setattr__(self, name, value)

    def zero_grad(self) -> None:
        """Every parameter's ``grad`` set to 0 in place: CuPy gradients in one launch
        (gpunet.cuda.optim.zero_arrays), the others by xp."""
        rest = cuda_optim.zero_arrays([p.grad for p in self.params], self._zero_tables)
        for grad in rest:
            grad[...] = 0

    def step(self) -> None:
        """One update of every parameter from its accumulated ``.grad``."""
        self.steps += 1
        states = iter(self.state)
        for group in self.param_groups:
            for p in group["params"]:
                state = next(states)
                self._follow(p, state)
                if self._kernel_update(p, state, group):
                    continue
                hyper = group
                if self._decoupled_decay:  # the update shrinks W itself: not biases
                    g = p.grad
                    if not p.decay and group["weight_decay"]:
                        hyper = {**group, "weight_decay": 0.0}
                else:
                    g = l2_gradient(p, group["weight_decay"])
                self._update(p.data, g, state, hyper)

    def _update(self, w, g, state, group) -> None:
        raise NotImplementedError

    def _kernel_update(self, p, state, group) -> bool:
        """Update ``p`` and its state in one launch of kernels/optim.cu (CuPy arrays,
        kernels enabled: ``gpunet.cuda.optim.accelerates``), the rule of ``_update``;
        returns whether it did (otherwise ``_update`` runs the xp math)."""
        return False

    @staticmethod
    def _l2(p, group) -> float:
        """The L2 rate of ``p`` (``l2_gradient``'s: none for a parameter without
        ``decay``)."""
        return group["weight_decay"] if p.decay else 0.0

    @staticmethod
    def _follow(p, state):
        """Keep state on the parameter's device and dtype after ``Module.to``."""
        for key, value in state.items():
            if value is not None and (device_of(value) != device_of(p.data)
                                      or value.dtype != p.data.dtype):
                state[key] = to_device(value, device_of(p.data)).astype(p.data.dtype)

    def state_dict(self) -> dict:
        """``{"hyperparameters": {...}, "param_groups": [{..., "params": [i, ...]}],
        "steps": int, "state": [{slot: array}]}`` with NumPy arrays, one state entry
        per parameter in group order; ``hyperparameters`` are the first group's (what
        a checkpoint without groups held), ``params`` index ``state``."""
        groups, start = [], 0
        for group in self.param_groups:
            count = len(group["params"])
            groups.append({**{k: group[k] for k in self._hyper},
                           "params": list(range(start, start + count))})
            start += count
        return {
            "hyperparameters": {name: self.param_groups[0][name] for name in self._hyper},
            "param_groups": groups,
            "steps": self.steps,
            "state": [{k: to_numpy(v).copy() for k, v in s.items() if v is not None}
                      for s in self.state],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters, step count and state; a mismatch in the number or
        shapes of the state arrays or of the groups raises ``ValueError`` and changes
        nothing. Without ``param_groups`` (an older state), ``hyperparameters`` go to
        every group except where the group set its own value."""
        where = f"{type(self).__name__}.load_state_dict"
        states = state_dict["state"]
        if len(states) != len(self.params):
            raise ValueError(f"{where}: state has {len(states)} entries but the optimizer "
                             f"has {len(self.params)} parameters")
        for i, (p, s) in enumerate(zip(self.params, states)):
            for key, value in s.items():
                if key not in self._slots or numpy.shape(value) != p.shape:
                    raise ValueError(f"{where}: state[{i}][{key!r}] has shape "
                                     f"{numpy.shape(value)}, expected one of {self._slots} "
                                     f"with shape {p.shape}")
        saved = state_dict.get("param_groups")
        if saved is not None:
            ours = self.state_dict()["param_groups"]
            if [list(g["params"]) for g in saved] != [g["params"] for g in ours]:
                raise ValueError(f"{where}: the saved groups hold "
                                 f"{[len(g['params']) for g in saved]} parameters, this "
                                 f"optimizer's {[len(g['params']) for g in ours]}")
            hypers = [{k: v for k, v in g.items() if k != "params"} for g in saved]
        else:
            hyper = state_dict.get("hyperparameters", {})
            hypers = [{k: v for k, v in hyper.items() if k not in own}
                      for own in self._overrides]
        for hyper in hypers:
            unknown = set(hyper) - set(self._hyper)
            if unknown:
                raise ValueError(f"{where}: unknown hyperparameters {sorted(unknown)}")
        for group, hyper in zip(self.param_groups, hypers):
            for name, value in hyper.items():
                group[name] = type(group[name])(value)
        self.steps = int(state_dict.get("steps", 0))
        self.state = [
            {k: to_device(v, device_of(p.data)).astype(p.data.dtype)
             for k, v in s.items()}
            for p, s in zip(self.params, states)]

    def _zeros_like(self, state, key, w):
        if key not in state:
            state[key] = w * 0
        return state[key]

    def __repr__(self) -> str:
        hyper = ", ".join(f"{name}={self.param_groups[0][name]}" for name in self._hyper)
        groups = f", {len(self.param_groups)} groups" if len(self.param_groups) > 1 else ""
        return f"{type(self).__name__}({hyper}{groups})"


class SGD(Optimizer):
    """PyTorch's SGD with momentum, dampening and Nesterov.

    ``dampening=momentum`` gives the notes' ``V = beta V + (1 - beta) dW`` from
    the second step on (PyTorch starts ``V`` at ``dW``, not at 0: use
    :class:`Momentum` for the notes' form exactly).
    """

    _hyper = ("lr", "momentum", "dampening", "nesterov", "weight_decay")
    _slots = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "nesterov": nesterov, "weight_decay": weight_decay})

    def _check_more(self, h):
        h["momentum"] = _checks.non_negative("momentum", h["momentum"])
        h["dampening"], h["nesterov"] = float(h["dampening"]), bool(h["nesterov"])
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError(f"nesterov=True needs momentum > 0 and dampening = 0, got "
                             f"momentum={h['momentum']}, dampening={h['dampening']}")

    def _update(self, w, g, state, h):
        state["momentum_buffer"] = sgd_update(
            w, g, state.get("momentum_buffer"), h["lr"], h["momentum"], h["dampening"],
            h["nesterov"])

    def _kernel_update(self, p, state, h):
        buffer = state.get("momentum_buffer")
        if not cuda_optim.accelerates(p.data, p.grad, buffer):
            return False
        state["momentum_buffer"] = cuda_optim.sgd_step(
            p.data, p.grad, buffer, h["lr"], h["momentum"], h["dampening"], h["nesterov"],
            self._l2(p, h))
        return True


class Momentum(Optimizer):
    """Gradient descent with momentum exactly as in the notes:
    ``V = beta V + (1 - beta) dW`` (``V`` starts at 0); ``W = W - lr V``."""

    _hyper = ("lr", "beta", "weight_decay")
    _slots = ("velocity",)

    def __init__(self, params, lr: float, beta: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "beta": beta, "weight_decay": weight_decay})

    def _check_more(self, h):
        h["beta"] = _checks.probability("beta", h["beta"], upper_inclusive=False)

    def _update(self, w, g, state, h):
        momentum_update(w, g, self._zeros_like(state, "velocity", w), h["lr"], h["beta"])

    def _kernel_update(self, p, state, h):
        if not cuda_optim.accelerates(p.data, p.grad, state.get("velocity")):
            return False
        cuda_optim.momentum_step(p.data, p.grad, self._zeros_like(state, "velocity", p.data),
                                 h["lr"], h["beta"], self._l2(p, h))
        return True


class RMSProp(Optimizer):
    """``S = beta S + (1 - beta) dW^2``; ``W = W - lr dW / (sqrt(S) + eps)``
    (PyTorch's RMSprop with ``alpha=beta``)."""

    _hyper = ("lr", "beta", "eps", "weight_decay")
    _slots = ("square_avg",)

    def __init__(self, params, lr: float, beta: float = 0.9, eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "beta": beta, "eps": eps,
                                  "weight_decay": weight_decay})

    def _check_more(self, h):
        h["beta"] = _checks.probability("beta", h["beta"], upper_inclusive=False)
        h["eps"] = _checks.non_negative("eps", h["eps"])

    def _update(self, w, g, state, h):
        rmsprop_update(w, g, self._zeros_like(state, "square_avg", w), h["lr"], h["beta"],
                       h["eps"])

    def _kernel_update(self, p, state, h):
        if not cuda_optim.accelerates(p.data, p.grad, state.get("square_avg")):
            return False
        cuda_optim.rmsprop_step(p.data, p.grad, self._zeros_like(state, "square_avg", p.data),
                                h["lr"], h["beta"], h["eps"], self._l2(p, h))
        return True


def _split_betas(name: str, given: dict) -> dict:
    """A group (or the defaults) with PyTorch's ``betas=(beta1, beta2)`` spelled as the
    notes' ``beta1``, ``beta2``; both spellings at once must agree."""
    if "betas" not in given:
        return given
    given = dict(given)
    betas = given.pop("betas")
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}") from None
    for key, value in (("beta1", beta1), ("beta2", beta2)):
        if given.get(key, value) != value:
            raise ValueError(f"{name}: betas={tuple(betas)} and {key}={given[key]} disagree; "
                             "give one spelling")
        given[key] = value
    return given


class Adam(Optimizer):
    """Adam with bias correction ``1 - beta^t``; see :func:`adam_update`.

    ``betas=(beta1, beta2)`` as PyTorch spells it (in a parameter group too) or the
    notes' ``beta1``, ``beta2``; ``weight_decay`` is L2, added to the gradient."""

    _hyper = ("lr", "beta1", "beta2", "eps", "weight_decay")
    _slots = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, beta1: float | None = None,
                 beta2: float | None = None, eps: float = 1e-8, weight_decay: float = 0.0,
                 betas: tuple[float, float] | None = None):
        name = type(self).__name__
        defaults = {"lr": lr, "eps": eps, "weight_decay": weight_decay,
                    **{k: v for k, v in (("beta1", beta1), ("beta2", beta2)) if v is not None}}
        if betas is not None:
            defaults = _split_betas(name, {**defaults, "betas": betas})
        defaults = {"beta1": 0.9, "beta2": 0.999, **defaults}
        if isinstance(params, (list, tuple)) and params and all(isinstance(g, dict)
                                                                for g in params):
            params = [_split_betas(f"{name}: param_groups[{i}]", g) for i, g in enumerate(params)]
        super().__init__(params, defaults)

    def _check_more(self, h):
        h["beta1"] = _checks.probability("beta1", h["beta1"], upper_inclusive=False)
        h["beta2"] = _checks.probability("beta2", h["beta2"], upper_inclusive=False)
        h["eps"] = _checks.non_negative("eps", h["eps"])

    def _update(self, w, g, state, h):
        adam_update(w, g, self._zeros_like(state, "exp_avg", w),
                    self._zeros_like(state, "exp_avg_sq", w), self.steps, h["lr"],
                    h["beta1"], h["beta2"], h["eps"])

    def _kernel_update(self, p, state, h):
        if not cuda_optim.accelerates(p.data, p.grad, state.get("exp_avg"),
                                      state.get("exp_avg_sq")):
            return False
        decay = self._l2(p, h)
        cuda_optim.adam_step(p.data, p.grad, self._zeros_like(state, "exp_avg", p.data),
                             self._zeros_like(state, "exp_avg_sq", p.data), self.steps, h["lr"],
                             h["beta1"], h["beta2"], h["eps"],
                             l2=0.0 if self._decoupled_decay else decay,
                             decoupled_decay=decay if self._decoupled_decay else 0.0)
        return True


class AdamW(Adam):
    """``torch.optim.AdamW``: Adam whose ``weight_decay`` (default 1e-2) shrinks the
    weights directly, ``W = W (1 - lr weight_decay)``, before Adam's step from the
    gradient alone; see :func:`adamw_update`."""

    _decoupled_decay = True

    def __init__(self, params, lr: float = 1e-3, beta1: float | None = None,
                 beta2: float | None = None, eps: float = 1e-8, weight_decay: float = 1e-2,
                 betas: tuple[float, float] | None = None):
        super().__init__(params, lr, beta1, beta2, eps, weight_decay, betas)

    def _update(self, w, g, state, h):
        adamw_update(w, g, self._zeros_like(state, "exp_avg", w),
                     self._zeros_like(state, "exp_avg_sq", w), self.steps, h["lr"],
                     h["beta1"], h["beta2"], h["eps"], h["weight_decay"])
