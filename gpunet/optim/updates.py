"""The optimizers' update rules as pure functions of arrays, applied in place (as
PyTorch's ``torch.optim`` functional forms): the reference every path follows, the
xp path on any array, and what kernels/optim.cu is tested against. The notes'
equations in each docstring."""
from __future__ import annotations

from ..nn.module import Module, Parameter

__all__ = ["l2_gradient", "decay_groups", "sgd_update", "momentum_update", "rmsprop_update",
           "adam_update", "adamw_update"]


def l2_gradient(param: Parameter, weight_decay: float):
    """``dJ/dW`` including the L2 term ``weight_decay/2 * ||W||^2`` (none for a
    parameter without ``decay``: biases, batch-norm vectors)."""
    if weight_decay and param.decay:
        return param.grad + weight_decay * param.data
    return param.grad


def decay_groups(params, weight_decay: float) -> list[dict]:
    """Two parameter groups: the parameters with ``decay`` set (weights) at
    ``weight_decay``, the others (biases, batch-norm vectors) at 0; a group with no
    parameters is left out."""
    if isinstance(params, Module):
        params = params.parameters()
    params = list(params)
    groups = [{"params": [p for p in params if p.decay], "weight_decay": weight_decay},
              {"params": [p for p in params if not p.decay], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


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


def adamw_update(w, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    """Loshchilov & Hutter's decoupled decay: ``W = W - lr weight_decay W`` first,
    then Adam's step from the gradient alone (no L2 term in ``g``, so the decay is
    not divided by ``sqrt(v_hat)``)."""
    if weight_decay:
        w *= 1.0 - lr * weight_decay
    adam_update(w, g, m, v, t, lr, beta1, beta2, eps)
