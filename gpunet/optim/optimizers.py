"""Optimizers: the class holds hyperparameters and per-parameter state (a list
aligned with the parameters); the update rule is a pure function of arrays,
applied in place.

Every optimizer takes ``weight_decay`` (L2): the gradient of a parameter with
``decay=True`` (weights, not biases or batch-norm vectors) gets
``+ weight_decay * W``, the derivative of ``weight_decay/2 * ||W||^2``.
"""
from __future__ import annotations

import numpy

from .. import _checks
from ..backend import device_of, to_device, to_numpy
from ..nn.module import Module, Parameter

__all__ = ["Optimizer", "SGD", "Momentum", "RMSProp", "Adam", "l2_gradient"]


def l2_gradient(param: Parameter, weight_decay: float):
    """``dJ/dW`` including the L2 term, for the parameters that decay."""
    if weight_decay and param.decay:
        return param.grad + weight_decay * param.data
    return param.grad


def sgd_update(w, g, buf, lr, momentum, dampening, nesterov):
    """PyTorch's SGD: ``buf = g`` on the first step, then ``buf = momentum buf +
    (1 - dampening) g``; the step is ``g + momentum buf`` (Nesterov) or ``buf``."""
    if momentum:
        if buf is None:
            buf = g.copy()
        else:
            buf *= momentum
            buf += (1.0 - dampening) * g if dampening else g
        g = g + momentum * buf if nesterov else buf
    w -= lr * g
    return buf


def momentum_update(w, g, v, lr, beta):
    """The notes: ``V = beta V + (1 - beta) dW``; ``W = W - lr V``."""
    v *= beta
    v += (1.0 - beta) * g
    w -= lr * v


def rmsprop_update(w, g, s, lr, beta, eps):
    """``S = beta S + (1 - beta) dW^2``; ``W = W - lr dW / (sqrt(S) + eps)``."""
    s *= beta
    s += (1.0 - beta) * g * g
    w -= lr * g / (s ** 0.5 + eps)


def adam_update(w, g, m, v, t, lr, beta1, beta2, eps):
    """Kingma & Ba: ``m, v`` are EWMAs of ``dW`` and ``dW^2``; with the bias
    corrections ``m / (1 - beta1^t)`` and ``v / (1 - beta2^t)`` (the notes drop
    the ``^t``, which would shrink every step by the constant ``1 - beta1``),
    ``W = W - lr m_hat / (sqrt(v_hat) + eps)``."""
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g
    m_hat = m / (1.0 - beta1 ** t)
    v_hat = v / (1.0 - beta2 ** t)
    w -= lr * m_hat / (v_hat ** 0.5 + eps)


class Optimizer:
    """Base class. Subclasses name their hyperparameters in ``_hyper``, their
    state arrays in ``_slots`` and implement ``_update(w, g, state)``."""

    _hyper: tuple[str, ...] = ("lr", "weight_decay")
    _slots: tuple[str, ...] = ()

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        if isinstance(params, Module):
            params = params.parameters()
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{type(self).__name__}: params[{i}] is a "
                                f"{type(p).__name__}, expected a Parameter")
        self.lr = _checks.non_negative("lr", lr)
        self.weight_decay = _checks.non_negative("weight_decay", weight_decay)
        self.state: list[dict] = [{} for _ in self.params]
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad[...] = 0

    def step(self) -> None:
        """One update of every parameter from its accumulated ``.grad``."""
        self.steps += 1
        for p, state in zip(self.params, self.state):
            self._follow(p, state)
            self._update(p.data, l2_gradient(p, self.weight_decay), state)

    def _update(self, w, g, state) -> None:
        raise NotImplementedError

    @staticmethod
    def _follow(p, state):
        """Keep state on the parameter's device and dtype after ``Module.to``."""
        for key, value in state.items():
            if value is not None and (device_of(value) != device_of(p.data)
                                      or value.dtype != p.data.dtype):
                state[key] = to_device(value, device_of(p.data)).astype(p.data.dtype)

    def state_dict(self) -> dict:
        """``{"hyperparameters": {...}, "steps": int, "state": [{slot: array}]}``
        with NumPy arrays, one state entry per parameter in order."""
        return {
            "hyperparameters": {name: getattr(self, name) for name in self._hyper},
            "steps": self.steps,
            "state": [{k: to_numpy(v).copy() for k, v in s.items() if v is not None}
                      for s in self.state],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters, step count and state; a mismatch in the number or
        shapes of the state arrays raises ``ValueError`` and changes nothing."""
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
        hyper = state_dict.get("hyperparameters", {})
        unknown = set(hyper) - set(self._hyper)
        if unknown:
            raise ValueError(f"{where}: unknown hyperparameters {sorted(unknown)}")
        for name, value in hyper.items():
            setattr(self, name, type(getattr(self, name))(value))
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
        hyper = ", ".join(f"{name}={getattr(self, name)}" for name in self._hyper)
        return f"{type(self).__name__}({hyper})"


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
        super().__init__(params, lr, weight_decay)
        self.momentum = _checks.non_negative("momentum", momentum)
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"nesterov=True needs momentum > 0 and dampening = 0, got "
                             f"momentum={momentum}, dampening={dampening}")

    def _update(self, w, g, state):
        state["momentum_buffer"] = sgd_update(
            w, g, state.get("momentum_buffer"), self.lr, self.momentum, self.dampening,
            self.nesterov)


class Momentum(Optimizer):
    """Gradient descent with momentum exactly as in the notes:
    ``V = beta V + (1 - beta) dW`` (``V`` starts at 0); ``W = W - lr V``."""

    _hyper = ("lr", "beta", "weight_decay")
    _slots = ("velocity",)

    def __init__(self, params, lr: float, beta: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        self.beta = _checks.probability("beta", beta, upper_inclusive=False)

    def _update(self, w, g, state):
        momentum_update(w, g, self._zeros_like(state, "velocity", w), self.lr, self.beta)


class RMSProp(Optimizer):
    """``S = beta S + (1 - beta) dW^2``; ``W = W - lr dW / (sqrt(S) + eps)``
    (PyTorch's RMSprop with ``alpha=beta``)."""

    _hyper = ("lr", "beta", "eps", "weight_decay")
    _slots = ("square_avg",)

    def __init__(self, params, lr: float, beta: float = 0.9, eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        self.beta = _checks.probability("beta", beta, upper_inclusive=False)
        self.eps = _checks.non_negative("eps", eps)

    def _update(self, w, g, state):
        rmsprop_update(w, g, self._zeros_like(state, "square_avg", w), self.lr, self.beta,
                       self.eps)


class Adam(Optimizer):
    """Adam with bias correction ``1 - beta^t``; see :func:`adam_update`."""

    _hyper = ("lr", "beta1", "beta2", "eps", "weight_decay")
    _slots = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        self.beta1 = _checks.probability("beta1", beta1, upper_inclusive=False)
        self.beta2 = _checks.probability("beta2", beta2, upper_inclusive=False)
        self.eps = _checks.non_negative("eps", eps)

    def _update(self, w, g, state):
        adam_update(w, g, self._zeros_like(state, "exp_avg", w),
                    self._zeros_like(state, "exp_avg_sq", w), self.steps, self.lr,
                    self.beta1, self.beta2, self.eps)
