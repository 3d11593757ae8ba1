"""Gradient checking, as in the notes: compare backprop's ``dTheta[i]`` with the
centred difference ``(J(theta + eps e_i) - J(theta - eps e_i)) / (2 eps)`` by the
relative error ``||approx - grad|| / (||approx|| + ||grad||)``: about 1e-7 is
great, 1e-3 or more is a bug. Gradients that are both below what centred
differences resolve (``100 * float64_eps * |J| / eps`` per entry) count as equal,
so a gradient that is exactly zero (a bias before batch norm) is not failed on
rounding noise; likewise the part of ``||approx - grad||`` within the rounding of the
differences themselves (``10 * float64_eps * |J| / eps`` per entry) is not counted as
error, so tiny correct gradients (1.179e-7 against 1.172e-7) do not fail the check.
Debugging only: it costs two forward passes per entry.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy

from . import _checks
from ._context import pool_pads
from .backend import to_numpy
from .nn import Dropout, LeakyReLU, MaxPool2d, Module, ReLU
from .optim.updates import l2_gradient

__all__ = ["gradcheck", "GradcheckReport", "ParamCheck"]

GREAT, BUG = 1e-7, 1e-3


@dataclass
class ParamCheck:
    """One array's result: ``rel_error`` over the ``checked`` entries, and the entry
    where analytic and numeric gradients differ most."""

    name: str
    rel_error: float
    worst_index: tuple
    analytic: float
    numeric: float
    checked: int
    # False when analytic and numeric gradients are both below what centred
    # differences resolve: the check then says nothing (a backward returning zeros
    # would pass), and the array is reported as unresolved, not as great
    resolved: bool = True
    bound: float = 0.0  # rel_error 0 means "below this": what rounding hides


@dataclass
class GradcheckReport:
    """Per-array checks (parameters by dotted name, plus ``"input"``)."""

    checks: dict[str, ParamCheck] = field(default_factory=dict)
    threshold: float = GREAT

    # Inputs of ReLU and max pooling within eps of their kink (0, or a window's
    # runner-up), where a centred difference straddles the kink and is wrong
    kinks: dict[str, int] = field(default_factory=dict)
    eps: float = 0.0

    @property
    def max_rel_error(self) -> float:
        return max((c.rel_error for c in self.checks.values()), default=0.0)

    @property
    def worst(self) -> ParamCheck | None:
        return max(self.checks.values(), key=lambda c: c.rel_error, default=None)

    @property
    def unresolved(self) -> list[str]:
        return [c.name for c in self.checks.values() if not c.resolved]

    @property
    def passed(self) -> bool:
        # unresolved arrays do not fail it (an exactly-zero true gradient is one), but
        # the verdict says "unresolved" rather than "great" and names them
        return self.max_rel_error < self.threshold

    @property
    def verdict(self) -> str:
        err = self.max_rel_error
        verdict = "great" if err < GREAT else "bug" if err >= BUG else "suspicious"
        if verdict == "great" and self.unresolved:
            return "unresolved"
        return verdict

    def __str__(self) -> str:
        lines = [f"{'array':<28} {'rel. error':>11}  {'worst index':<18} "
                 f"{'analytic':>12} {'numeric':>12} {'checked':>8}"]
        for c in self.checks.values():
            error = ("unresolved" if not c.resolved
                     else f"<{c.bound:.0e}" if c.rel_error == 0 else f"{c.rel_error:.3e}")
            lines.append(f"{c.name:<28} {error:>11}  {str(c.worst_index):<18} "
                         f"{c.analytic:12.5e} {c.numeric:12.5e} {c.checked:8d}")
        lines.append(f"max relative error {self.max_rel_error:.3e}: {self.verdict}")
        if self.unresolved:
            lines.append(f"unresolved: {', '.join(self.unresolved)}: gradients below what "
                         f"centred differences resolve at eps={self.eps:g}; not checked "
                         "(scale the input or loss up, or check in float64 with a larger eps)")
        if self.kinks and self.verdict in ("bug", "suspicious"):
            where = ", ".join(f"{n} {k}" for k, n in self.kinks.items())
            lines.append(f"kinks: inputs within eps={self.eps:g} of a ReLU or max-pool decision "
                         f"({where}): differences across a kink are wrong, not the backward; "
                         "try a smaller eps")
        return "\n".join(lines)


def _active_dropout(model: Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, Dropout) and module.training and module.p > 0:
            return f"{name or type(model).__name__} (Dropout(p={module.p}))"
    return None


def gradcheck(model: Module, loss, x, y, eps: float = 1e-7, params=None,
              max_per_param: int | None = None, *, weight_decay: float = 0.0,
              check_input: bool = True, threshold: float = GREAT,
              seed: int = 0) -> GradcheckReport:
    """Check ``model``'s backward against centred differences of
    ``J = loss(model(x), y) + weight_decay/2 * sum ||W||^2`` over the parameters the
    optimizers decay (``decay`` set: weights, not biases or batch-norm vectors).

    Runs on a float64 copy (the model itself is untouched). ``params`` limits the
    check to these dotted parameter names; ``max_per_param`` samples that many
    entries per array (seeded by ``seed``) instead of all; ``check_input`` also
    checks the gradient with respect to ``x`` (reported as ``"input"``).
    Refuses a model with active dropout: its masks change between the passes.
    """
    if not isinstance(model, Module):
        raise TypeError(f"gradcheck: model must be a Module, got {type(model).__name__}")
    active = _active_dropout(model)
    if active:
        raise ValueError(f"gradcheck: dropout is active at {active}; gradient checking "
                         "does not work with dropout - call model.eval() or use p=0")
    if not eps > 0:
        raise ValueError(f"eps: expected a number > 0, got {eps!r}")
    _checks.non_negative("weight_decay", weight_decay)
    _checks.float_array("gradcheck", "x", x)

    model = copy.deepcopy(model).to(dtype="float64")
    x = x.astype(numpy.float64)
    if getattr(y, "dtype", None) is not None and y.dtype.kind == "f":
        y = y.astype(numpy.float64)
    named = dict(model.named_parameters())
    names = list(named) if params is None else list(params)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(f"params: unknown parameter names {unknown}; the model has "
                         f"{list(named)}")

    def objective() -> float:
        j = loss.forward(model.forward(x), y)
        for p in named.values():
            if weight_decay and p.decay:
                j += 0.5 * weight_decay * float((p.data * p.data).sum())
        return j

    kinks, kinks_counted = _watch_kinks(model, eps)
    model.zero_grad()
    # What a centred difference can resolve: rounding of J over a 2 eps step.
    resolution = numpy.finfo(numpy.float64).eps * max(1.0, abs(objective())) / eps
    kinks_counted.append(True)  # the perturbed passes that follow move inputs by design
    dx = model.backward(loss.backward())
    targets = [(n, named[n].data, l2_gradient(named[n], weight_decay)) for n in names]
    if check_input:
        targets.append(("input", x, dx))

    rng = numpy.random.default_rng(seed)
    report = GradcheckReport(threshold=threshold, eps=eps)
    report.kinks = {k: n for k, n in kinks.items() if n}
    for name, array, analytic in targets:
        analytic = to_numpy(analytic).copy()
        report.checks[name] = _check_array(name, array, analytic, objective, eps,
                                           max_per_param, rng, resolution)
    return report


def _check_array(name, array, analytic, objective, eps, max_per_param, rng,
                 resolution) -> ParamCheck:
    flat_size = array.size
    if max_per_param is not None and max_per_param < flat_size:
        flat = rng.choice(flat_size, size=max_per_param, replace=False)
    else:
        flat = numpy.arange(flat_size)
    indices = [numpy.unravel_index(i, array.shape) for i in flat]
    numeric = numpy.empty(len(indices))
    for k, idx in enumerate(indices):
        original = float(array[idx])
        array[idx] = original + eps
        plus = objective()
        array[idx] = original - eps
        minus = objective()
        array[idx] = original
        numeric[k] = (plus - minus) / (2 * eps)
    picked = numpy.array([analytic[idx] for idx in indices])
    floor = 100 * resolution * numpy.sqrt(len(indices))
    noise = 10 * resolution * numpy.sqrt(len(indices))  # rounding in the differences
    norms = numpy.linalg.norm(numeric) + numpy.linalg.norm(picked)
    resolved = bool(norms > floor)
    if not resolved:
        rel = 0.0  # both are zero as far as differences can tell: unresolved, not great
    else:
        rel = float(max(0.0, numpy.linalg.norm(numeric - picked) - noise) / norms)
    worst = int(numpy.argmax(numpy.abs(numeric - picked))) if len(indices) else 0
    return ParamCheck(name, rel, tuple(int(i) for i in indices[worst]) if indices else (),
                      float(picked[worst]) if indices else 0.0,
                      float(numeric[worst]) if indices else 0.0, len(indices), resolved,
                      float(noise / norms) if resolved else 0.0)


def _watch_kinks(model: Module, eps: float) -> tuple[dict[str, int], list]:
    """Counts, updated until ``done`` is made true (after the unperturbed pass), of ReLU
    inputs within ``eps`` of 0 and of max-pool windows whose two largest inputs are
    within ``eps`` of each other. Wraps the (copied) model's layers' forward."""
    counts = {"ReLU inputs": 0, "max-pool windows": 0}
    done = []

    def relu_kinks(x):
        return int((numpy.abs(to_numpy(x)) < eps).sum())

    def pool_kinks(layer, x):
        x = to_numpy(x)
        (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
        # ceil mode's windows overhang the bottom/right: pad those too
        ((pt, pb), (pl, pr)), _ = pool_pads(x.shape, layer.kernel_size, layer.stride,
                                            layer.padding, layer.ceil_mode)
        x = numpy.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=-numpy.inf)
        windows = numpy.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
        windows = windows[:, :, ::sh, ::sw].reshape(*windows.shape[:2], -1, kh * kw)
        top = numpy.sort(windows, axis=-1)[..., -2:]
        # (ties at 0 are ReLU outputs below their kink: the ReLU count has those)
        return int(((top[..., 1] - top[..., 0] < eps) & (top[..., 1] != 0)).sum())

    def wrap(layer, key, count):
        forward = layer.forward

        def watched(x):
            if not done:
                counts[key] += count(x)
            return forward(x)
        object.__setattr__(layer, "forward", watched)

    for _, layer in model.named_modules():
        if isinstance(layer, (ReLU, LeakyReLU)):
            wrap(layer, "ReLU inputs", relu_kinks)
        elif isinstance(layer, MaxPool2d):
            wrap(layer, "max-pool windows", lambda x, layer=layer: pool_kinks(layer, x))
    return counts, done
