"""What the conv2d kernels would launch for each convolution of
``gpunet.benchmarks.LAYER_CASES`` at its GPU batch, without a GPU.

For every case and pass (forward, backward-data, backward-weight) one row of the
plan gpunet/cuda/conv2d.py launches (gpunet.cuda.conv2d_plan): kernel, tile, grid,
slices of a split reduction (split-K; summed in order by a second launch), blocks an
SM holds, waves on ``--sms`` SMs (132: an H100 SXM), how full the launched waves are,
and issued over useful multiply-adds. Nothing is timed; the figures
follow from the launch geometry alone.

    PYTHONPATH=. python bench/gpu_plan.py [--sms 132] [--dtype float32] [--tf32] [--markdown]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpunet.benchmarks import LAYER_CASES  # noqa: E402
from gpunet.cuda import conv2d_plan  # noqa: E402
from gpunet.ops.common import normalize_padding  # noqa: E402

PASSES = ("forward", "data", "weight")


def case_plans(case, dtype: str = "float32", tf32: bool = False, sms: int = 132):
    """``[(pass, Plan), ...]`` of one conv case at its GPU batch: the launches of
    every pass (a pass may launch more than one GEMM kernel)."""
    case = case.on_gpu()
    n, c, h, w = case.shape
    k, (r, s), (oh, ow) = case.args[1], case.kernel, case.out_hw
    stride = (case.stride, case.stride)
    pads = normalize_padding(case.padding, (r, s), stride)
    sizes = (n, c, h, w, k, r, s, oh, ow)
    return [("forward", conv2d_plan.forward_plan(sizes, stride, pads, dtype, tf32, sms)),
            ("data", conv2d_plan.data_plan(sizes, stride, pads, dtype, tf32, sms)),
            ("weight", conv2d_plan.weight_plan(sizes, stride, pads, dtype, tf32, sms))]


def rows(dtype="float32", tf32=False, sms=132):
    out = []
    for case in LAYER_CASES:
        if case.op != "conv":
            continue
        for name, plan in case_plans(case, dtype, tf32, sms):
            out.append((case.id, name, plan))
    return out


def format_table(table, markdown: bool = False) -> str:
    head = ["case", "pass", "kernel", "tile", "grid", "split", "blk/SM", "waves", "wave fill",
            "issued/useful"]
    lines = []
    for case, name, p in table:
        lines.append([case, name, p.kernel, f"{p.tile[0]}x{p.tile[1]}",
                      "x".join(str(g) for g in p.grid), str(p.split), str(p.blocks_per_sm),
                      f"{p.waves:.2f}", f"{p.wave_fill:.2f}", f"{p.overwork:.2f}"])
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                         ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    return "\n".join("  ".join(x[i].ljust(widths[i]) for i in range(len(head)))
                     for x in [head] + lines)


def worst(table) -> str:
    """Per pass: the worst issued/useful; the worst wave fill of a launch with at
    least one wave of blocks; the worst of a pass with a wave of work (its blocks, or
    split-K slices of MIN_SLICE terms, fill the SMs; a grid under one wave counted
    by its share of one: conv2d_plan.fill_score)."""
    out = []
    for name in PASSES:
        plans = [p for _, n, p in table if n == name]
        full = [p for p in plans if p.waves >= 1]
        fill = min((p.wave_fill for p in full), default=float("nan"))
        work = min((conv2d_plan.fill_score(p.waves) for p in plans if p.a_wave_of_work),
                   default=float("nan"))
        out.append(f"{name}: worst issued/useful {max(p.overwork for p in plans):.2f}, "
                   f"worst wave fill (>= 1 wave) {fill:.2f}, (a wave of work) {work:.2f}, "
                   f"fewest waves {min(p.waves for p in plans):.2f}")
    scored = sorted((conv2d_plan.fill_score(p.waves), case, name) for case, name, p in table)
    short = [f"{case} {name} {score:.2f}" for score, case, name in scored
             if score < conv2d_plan.GOOD_FILL]
    out.append(f"every pass: worst fill {scored[0][0]:.2f} ({scored[0][1]} {scored[0][2]}; "
               f"under one wave counted by its share of one); under "
               f"{conv2d_plan.GOOD_FILL}: {', '.join(short) or 'none'}")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sms", type=int, default=132)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--tf32", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    table = rows(args.dtype, args.tf32, args.sms)
    print(format_table(table, args.markdown))
    print()
    print(worst(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
