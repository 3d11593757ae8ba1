"""Search spaces as the notes describe them: each hyperparameter sampled on the scale
that fits it (:class:`Param`), ranges narrowed coarse to fine (:func:`refine`), and
checked against what ``gpunet train`` takes (:func:`check_space`, :func:`check_trials`)."""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

from ..recipe.device import use_device
from ..recipe.run_config import RunConfig, RunConfigError, check_flags, flag_problem, option


@dataclass(frozen=True)
class Param:
    """One hyperparameter and how to sample it: ``kind`` is ``log`` (``10**r``),
    ``beta`` (``1 - 10**r``), ``uniform``, ``int``, ``pow2`` (``2**k``) or ``choice``."""
    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    options: tuple = ()

    def __post_init__(self):
        where = f"{self.name}={self.spec()}"
        if self.kind == "choice":
            if not self.options:
                raise ValueError(f"{where}: a choice needs at least one option")
            return
        if self.kind not in KINDS:
            raise ValueError(f"{where}: the kind must be one of {', '.join(KINDS)}, "
                             f"got {self.kind!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"{where}: low must be below high, got low={self.low}, "
                             f"high={self.high}")
        if self.kind == "log" and self.low <= 0:
            raise ValueError(f"{where}: a log range needs low > 0, got {self.low}")
        if self.kind == "beta" and not 0 < self.low < self.high < 1:
            raise ValueError(f"{where}: beta needs 0 < low < high < 1, got {self.low}, "
                             f"{self.high}")
        if self.kind in ("int", "pow2") and (self.low != int(self.low)
                                             or self.high != int(self.high)):
            raise ValueError(f"{where}: {self.kind} needs whole bounds")
        if self.kind == "pow2" and (self.low < 1 or not _is_pow2(self.low)
                                    or not _is_pow2(self.high)):
            raise ValueError(f"{where}: pow2 needs powers of two >= 1, got {self.low}, "
                             f"{self.high}")

    def spec(self) -> str:
        """The ``--param`` text: ``log:0.0001:1``, ``choice:sgd,adam`` ..."""
        if self.kind == "choice":
            return "choice:" + ",".join(str(o) for o in self.options)
        return f"{self.kind}:{_number(self.low)}:{_number(self.high)}"

    def contains(self, value) -> bool:
        """Whether ``value`` is one this parameter samples."""
        if self.kind == "choice":
            return value in self.options
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def sample(self, trial):
        """The value for an Optuna ``trial``; what Optuna samples uniformly is the
        scale: r for ``log`` (named ``name``), log10(1 - beta) (named ``1-name``)."""
        if self.kind == "log":
            return trial.suggest_float(self.name, self.low, self.high, log=True)
        if self.kind == "beta":
            return 1.0 - trial.suggest_float(f"1-{self.name}", 1.0 - self.high, 1.0 - self.low,
                                             log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.name, self.low, self.high)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        if self.kind == "pow2":
            return 2 ** trial.suggest_int(f"log2({self.name})", int(math.log2(self.low)),
                                          int(math.log2(self.high)))
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.options))
        raise ValueError(f"{self.name}: cannot sample kind {self.kind!r}")

    def scale(self, value: float) -> float:
        """Where ``value`` sits on the sampling scale (refining and plots use it)."""
        if self.kind == "log":
            return math.log10(value)
        if self.kind == "beta":
            return math.log10(1.0 - value)
        if self.kind == "pow2":
            return math.log2(value)
        return float(value)

    def unscale(self, u: float) -> float:
        if self.kind == "log":
            return 10.0 ** u
        if self.kind == "beta":
            return 1.0 - 10.0 ** u
        if self.kind == "pow2":
            return 2.0 ** round(u)
        return round(u) if self.kind == "int" else u


KINDS = ("log", "beta", "uniform", "int", "pow2", "choice")


def _is_pow2(x) -> bool:
    return x >= 1 and int(x) & (int(x) - 1) == 0


def _number(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) >= 1 else f"{x:g}"


def log_uniform(name, low, high) -> Param:
    """``10**r`` with ``r`` uniform in ``[log10 low, log10 high]``: a learning rate."""
    return Param(name, "log", float(low), float(high))


def one_minus_log_uniform(name, low, high) -> Param:
    """``1 - 10**r`` with ``r`` uniform in ``[log10(1 - high), log10(1 - low)]``: a
    beta of momentum, RMSProp or Adam, as much effort on 0.99-0.999 as on 0.9-0.99."""
    return Param(name, "beta", float(low), float(high))


def uniform(name, low, high) -> Param:
    return Param(name, "uniform", float(low), float(high))


def int_uniform(name, low, high, power_of_two: bool = False) -> Param:
    """A whole number in ``[low, high]``; with ``power_of_two``, ``2**k`` with ``k``
    uniform (batch sizes)."""
    return Param(name, "pow2" if power_of_two else "int", int(low), int(high))


def choice(name, options) -> Param:
    return Param(name, "choice", options=tuple(options))


def _option(text: str):
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_param(text: str, where: str | None = None) -> Param:
    """``name=kind:low:high`` or ``name=choice:a,b,c``, as ``--param`` takes it; errors
    start with ``where`` (default: ``--param 'TEXT'``)."""
    where = where or f"--param {text!r}"
    name, sep, rest = text.partition("=")
    kind, _, bounds = rest.partition(":")
    if not sep or not name or not kind:
        raise ValueError(f"{where}: expected NAME=KIND:LOW:HIGH or NAME=choice:A,B "
                         f"(KIND one of {', '.join(KINDS)})")
    if kind not in KINDS:
        raise ValueError(f"{where}: the kind must be one of {', '.join(KINDS)} "
                         f"(KIND:LOW:HIGH or choice:A,B), got {kind!r}")
    name = name.strip().replace("-", "_")
    if kind == "choice":
        return choice(name, [_option(o) for o in bounds.split(",") if o])
    parts = bounds.split(":")
    if len(parts) != 2:
        raise ValueError(f"{where}: {kind} takes LOW:HIGH, got {bounds!r}")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{where}: LOW and HIGH must be numbers") from None
    return Param(name, kind, low, high)


def read_space(path: str) -> list[Param]:
    """A JSON or YAML (``.yaml``, ``.yml``) mapping of NAME: SPEC, e.g.
    ``{"lr": "log:1e-4:1", "optimizer": "choice:sgd,adam"}``."""
    malformed = (ValueError,)  # json's JSONDecodeError, a UnicodeDecodeError
    if path.endswith((".yaml", ".yml")):
        import yaml  # Optuna brings PyYAML
        load, form, malformed = yaml.safe_load, "YAML", malformed + (yaml.YAMLError,)
    else:
        load, form = json.load, "JSON"
    try:
        with open(path) as f:
            entries = load(f)
    except OSError as exc:
        raise ValueError(f"--space {path}: cannot read it: {exc.strerror or exc}") from None
    except malformed as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__  # YAML's: lines
        raise ValueError(f"--space {path}: expected {form}, got: {reason}") from None
    example = '{"lr": "log:1e-4:1", "optimizer": "choice:sgd,adam"}'
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"--space {path}: expected a mapping of NAME: SPEC, e.g. {example}, "
                         f"got {entries!r}"[:300])
    space = []
    for name, spec in entries.items():
        where = f"--space {path}: {name!r}"
        if not isinstance(spec, str):
            raise ValueError(f"{where}: expected a spec KIND:LOW:HIGH or choice:A,B in quotes "
                             f"(KIND one of {', '.join(KINDS)}; e.g. {example}), "
                             f"got {spec!r}")
        try:
            space.append(parse_param(f"{name}={spec}", where))
        except ValueError as exc:
            message = str(exc)
            raise ValueError(message if message.startswith(where)
                             else f"{where}: {message}") from None
    return space


def refine(space: list[Param], best: list[dict], margin: float = 0.1) -> list[Param]:
    """Coarse to fine: each range narrowed to the span of the ``best`` trials'
    values (dicts of name: value) on its own scale, widened by ``margin`` of the
    old span and kept inside the old range; a choice keeps the options they used."""
    if not best:
        raise ValueError("refine: no finished trial to refine around")
    narrowed = []
    for param in space:
        values = [trial[param.name] for trial in best if param.name in trial]
        if not values:
            narrowed.append(param)
            continue
        if param.kind == "choice":
            narrowed.append(choice(param.name, [o for o in param.options if o in values]))
            continue
        low, high = param.scale(param.low), param.scale(param.high)
        if param.kind == "beta":
            low, high = high, low  # log10(1 - beta) falls as beta rises
        pad = margin * (high - low)
        us = [param.scale(v) for v in values]
        new_low, new_high = max(low, min(us) - pad), min(high, max(us) + pad)
        ends = sorted((param.unscale(new_low), param.unscale(new_high)))
        if param.kind in ("int", "pow2") and ends[0] == ends[1]:
            narrowed.append(choice(param.name, [int(ends[0])]))
            continue
        narrowed.append(Param(param.name, param.kind, *ends))
    return narrowed


# Training flags a search space may set, and the kinds each takes.
TUNABLE = {"lr": "float", "momentum": "float", "weight_decay": "float", "decay": "float",
           "flip": "float", "batch_size": "int", "step_size": "int", "epochs": "int",
           "optimizer": "choice", "schedule": "choice", "batch_norm": "choice",
           "model": "choice"}
_KINDS_FOR = {"float": ("log", "beta", "uniform", "choice"), "int": ("int", "pow2", "choice"),
              "choice": ("choice",)}


def check_space(space: list[Param]) -> None:
    """Each name a training flag tune can set, once, with a kind it takes."""
    seen = set()
    for param in space:
        if param.name not in TUNABLE:
            raise ValueError(f"--param {param.name}: not a hyperparameter tune can set; one of "
                             + ", ".join(sorted(TUNABLE)))
        if param.name in seen:
            raise ValueError(f"--param {param.name}: given twice")
        seen.add(param.name)
        kinds = _KINDS_FOR[TUNABLE[param.name]]
        if param.kind not in kinds:
            raise ValueError(f"--param {param.name}={param.spec()}: {param.name} takes "
                             + ", ".join(kinds))


def _ends(param: Param) -> list:
    """The values that bound what ``param`` samples: each option of a choice, else
    low and high (every range is monotone in its scale, so the checks of train, all
    bounds or sets, hold inside it when they hold at both ends)."""
    if param.kind == "choice":
        return list(param.options)
    if param.kind in ("int", "pow2"):
        return [int(param.low), int(param.high)]
    return [param.low, param.high]

def _check_value(name: str, value, where: str) -> None:
    """``value`` as ``gpunet train`` takes flag ``name`` (its type, its choices)."""
    problem = flag_problem(name, value)
    if problem:
        raise ValueError(f"{where}: gpunet train's {option(name)} {problem}")


def check_trials(space: list[Param], train: dict) -> None:
    """What ``gpunet train`` would refuse in every trial, refused before the first: the
    fixed flags of ``train`` and each value ``space`` can sample checked against train's
    flags (their types and choices), then train's own checks
    (:func:`gpunet.recipe.run_config.check_flags`) at each combination of the ends of the
    ranges, so that flags that depend on each other (--schedule, --decay) are checked
    together. The device is opened as train opens it."""
    for name, value in train.items():
        _check_value(name, value, option(name))
    for param in space:
        for value in _ends(param):
            _check_value(param.name, value, f"--param {param.name}={param.spec()}")
    names = [param.name for param in space]
    for values in itertools.product(*(_ends(param) for param in space)):
        try:
            check_flags(RunConfig(**{**train, **dict(zip(names, values))}))
        except RunConfigError as exc:
            message = str(exc)
            blamed = [f"--param {p.name}={p.spec()}" for p, v in zip(space, values)
                      if option(p.name) in message]
            raise ValueError(message + (f" (a value {' and '.join(blamed)} can sample)"
                                        if blamed else "")) from None
    use_device(train["device"], quiet=True)
