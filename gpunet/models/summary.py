"""The notes' table of a network: layer, activation shape, activation size, parameters."""
from __future__ import annotations

from dataclasses import dataclass

import numpy

from ..backend import get_device
from ..nn import Module, Sequential


@dataclass
class Row:
    name: str
    kind: str
    shape: tuple
    size: int
    params: int


@dataclass
class Summary:
    rows: list[Row]
    input_shape: tuple

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    def __str__(self) -> str:
        head = (f"{'layer':<24} {'activation shape':<20} {'activation size':>15} "
                f"{'# parameters':>13}")
        lines = [head, "-" * len(head)]
        size = int(numpy.prod(self.input_shape))
        lines.append(f"{'input':<24} {str(self.input_shape):<20} {size:>15,} {0:>13,}")
        for r in self.rows:
            label = f"{r.name} {r.kind}"
            lines.append(f"{label:<24} {str(r.shape):<20} {r.size:>15,} {r.params:>13,}")
        lines.append("-" * len(head))
        lines.append(f"total parameters: {self.total_params:,}")
        return "\n".join(lines)


def summary(model: Module, input_shape, print_table: bool = True, dtype="float32") -> Summary:
    """Run one zero image of ``input_shape`` ``(C, H, W)`` through ``model`` in eval
    mode and tabulate every layer (``Sequential`` containers are opened up)."""
    input_shape = tuple(int(s) for s in input_shape)
    rows: list[Row] = []

    def walk(module, x, name):
        if isinstance(module, Sequential):
            for child_name, child in module.named_children():
                x = walk(child, x, f"{name}.{child_name}" if name else child_name)
            return x
        y = module.forward(x)
        params = sum(int(p.data.size) for p in module.parameters())
        rows.append(Row(name, type(module).__name__, tuple(y.shape[1:]),
                        int(numpy.prod(y.shape[1:])), params))
        return y

    was_training = model.training
    model.eval()
    try:
        walk(model, get_device().xp.zeros((1, *input_shape), dtype=dtype), "")
    finally:
        model.train(was_training)
    table = Summary(rows, input_shape)
    if print_table:
        print(table)
    return table

