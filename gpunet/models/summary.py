"""The notes' table of a network: layer, activation shape, activation size,
parameters, and what it costs: multiply-adds and memory, counted as torchinfo does."""
from __future__ import annotations

from dataclasses import dataclass

import numpy

from ..backend import get_device
from ..nn import Conv2d, Linear, Module


@dataclass
class Row:
    """One layer's call: output shape and size per example, parameters, and
    multiply-adds per example (torchinfo's rule: a convolution's parameters times
    its output positions, any other layer's parameters once; none without them)."""
    name: str
    kind: str
    shape: tuple
    size: int
    params: int
    macs: int = 0


@dataclass
class Summary:
    """Rows in call order and the totals at ``batch_size`` examples of ``itemsize``
    bytes per value: ``total_macs`` (forward multiply-adds), ``param_bytes``,
    ``activation_bytes`` (torchinfo's forward/backward pass size: each layer's
    output kept for backward and its gradient, 2 x outputs) and ``input_bytes``."""
    rows: list[Row]
    input_shape: tuple
    batch_size: int = 1
    itemsize: int = 4

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def total_macs(self) -> int:
        return self.batch_size * sum(r.macs for r in self.rows)

    @property
    def param_bytes(self) -> int:
        return self.itemsize * self.total_params

    @property
    def activation_bytes(self) -> int:
        return 2 * self.itemsize * self.batch_size * sum(r.size for r in self.rows)

    @property
    def input_bytes(self) -> int:
        return self.itemsize * self.batch_size * int(numpy.prod(self.input_shape))

    @property
    def total_bytes(self) -> int:
        return self.input_bytes + self.activation_bytes + self.param_bytes

    def __str__(self) -> str:
        head = (f"{'layer':<32} {'activation shape':<20} {'activation size':>15} "
                f"{'# parameters':>13} {'mult-adds':>15}")
        lines = [head, "-" * len(head)]
        size = int(numpy.prod(self.input_shape))
        lines.append(f"{'input':<32} {str(self.input_shape):<20} {size:>15,} {0:>13,} "
                     f"{0:>15,}")
        for r in self.rows:
            label = f"{r.name} {r.kind}"
            lines.append(f"{label:<32} {str(r.shape):<20} {r.size:>15,} {r.params:>13,} "
                         f"{r.macs:>15,}")
        mb = 1e6  # torchinfo's MB
        lines += ["-" * len(head),
                  f"total parameters: {self.total_params:,}",
                  f"forward mult-adds at batch {self.batch_size}: {self.total_macs:,} "
                  f"({self.total_macs / 1e9:.2f} G)",
                  f"input size (MB): {self.input_bytes / mb:.2f}",
                  f"forward/backward pass size (MB): {self.activation_bytes / mb:.2f}",
                  f"params size (MB): {self.param_bytes / mb:.2f}",
                  f"estimated total size (MB): {self.total_bytes / mb:.2f}"]
        return "\n".join(lines)


def _macs(module: Module, y, params: int) -> int:
    if isinstance(module, Conv2d):
        return params * int(numpy.prod(y.shape[2:]))
    return params


def _checked_input_shape(input_shape) -> tuple:
    try:
        shape = tuple(input_shape)
        if all(isinstance(s, (int, numpy.integer)) and not isinstance(s, bool) and s > 0
               for s in shape) and shape:
            return tuple(int(s) for s in shape)
    except TypeError:
        pass
    raise ValueError(f"input_shape: expected one example's shape, e.g. (C, H, W), of positive "
                     f"ints, got {input_shape!r}")


def _check_first_layer(name: str, module: Module, input_shape: tuple) -> None:
    """``input_shape`` against what the first layer to run takes, so that the error
    names the argument rather than the layer's array check (``must be 4-D``)."""
    if isinstance(module, Conv2d):
        if len(input_shape) != 3 or input_shape[0] != module.in_channels:
            raise ValueError(f"input_shape: expected (C, H, W) with C = {module.in_channels} "
                             f"for the first layer ({name}: {module!r}); got {input_shape}")
    elif isinstance(module, Linear) and input_shape[-1] != module.in_features:
        raise ValueError(f"input_shape: expected (..., {module.in_features}) for the first "
                         f"layer ({name}: {module!r}); got {input_shape}")


def summary(model: Module, input_shape, print_table: bool = True, dtype="float32",
            batch_size: int = 1) -> Summary:
    """Run one zero image of ``input_shape`` ``(C, H, W)`` through ``model`` in eval
    mode and tabulate every layer without submodules, in the order they run
    (blocks and containers are opened up, whatever their wiring); the totals are
    for ``batch_size`` images of ``dtype``."""
    input_shape = _checked_input_shape(input_shape)
    rows: list[Row] = []

    def recorded(name, module):
        forward = module.forward

        def forward_and_record(x):
            if not rows and tuple(x.shape[1:]) == input_shape:  # the layer fed the input
                _check_first_layer(name, module, input_shape)
            y = forward(x)
            params = sum(int(p.data.size) for p in module.parameters())
            rows.append(Row(name, type(module).__name__, tuple(y.shape[1:]),
                            int(numpy.prod(y.shape[1:])), params, _macs(module, y, params)))
            return y
        return forward_and_record

    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        for name, module in leaves:  # an instance attribute shadows the class's forward
            object.__setattr__(module, "forward", recorded(name or type(module).__name__,
                                                           module))
        model.forward(get_device().xp.zeros((1, *input_shape), dtype=dtype))
    finally:
        for _, module in leaves:
            module.__dict__.pop("forward", None)
            # what the forward saved for a backward that never comes (im2col columns,
            # masks): kept, it held the model's activations on the GPU after the summary
            if module.__dict__.get("_ctx") is not None:
                module._ctx = None
        model.train(was_training)
    table = Summary(rows, input_shape, int(batch_size), numpy.dtype(dtype).itemsize)
    if print_table:
        print(table)
    return table
