"""How ``gpunet`` ends a command that failed: one line, and in a distributed run every
process with it; what ran out of memory and what to lower; a Ctrl-C that a library
wrapped; a command started by ``mpiexec`` that runs in one process."""
from __future__ import annotations

import sys
import traceback

from .. import backend
from .. import distributed as gpunet_distributed
from ..models import summary
from ..recipe.building import build_model
from .parser import UsageError


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"


# Arrays an optimizer keeps per parameter, beside the parameter and its gradient.
OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2, "rmsprop": 1, "momentum": 1, "sgd": 1}


def _memory_needs(args) -> str:
    """What the run's model needs, from its summary (built again on the CPU): its
    parameters (with gradients and optimizer state when training) and the
    activations of one forward pass at the batch size; "" where that is unknown."""
    name, in_channels, batch_norm, input_shape = args.memory_model
    previous = backend.get_device()
    try:
        backend.set_device("cpu")
        table = summary(build_model(name, in_channels, batch_norm), input_shape,
                        print_table=False)
    except (MemoryError, ValueError):
        return ""
    finally:
        backend.set_device(previous)
    params = 4 * table.total_params  # float32
    line = f"{name} has {table.total_params:,} parameters ({_size(params)}"
    if args.command == "train":
        slots = OPTIMIZER_SLOTS[args.optimizer] if args.optimizer != "sgd" or args.momentum \
            else 0
        line += f", {_size(params * (2 + slots))} with gradients and {args.optimizer} state"
    activations = 4 * sum(row.size for row in table.rows) * args.batch_size
    return (line + f") and its activations take {_size(activations)} at batch "
            f"{args.batch_size} (gpunet summary {name})")


def out_of_memory_message(args, exc: MemoryError) -> str:
    """The command, its phase, GPU or host memory, what the model needs and what to
    lower, in one line."""
    from ..train import OutOfMemoryError
    gpu = exc.gpu if isinstance(exc, OutOfMemoryError) else backend.is_out_of_memory(exc)
    traceback.clear_frames(exc.__traceback__)  # they hold the model and the batch
    backend.release_cached_memory()
    command = getattr(args, "command", None) or "gpunet"
    phase = getattr(args, "phase", None) or "running"
    where = f" ({exc.where})" if isinstance(exc, OutOfMemoryError) else ""
    detail = exc.detail if isinstance(exc, OutOfMemoryError) else str(exc)
    memory = f"GPU memory on {backend.get_device().name}" if gpu else "host memory"
    needs = _memory_needs(args) if hasattr(args, "memory_model") else ""
    advice = []
    if hasattr(args, "batch_size") and phase not in ("building the model", "loading the data"):
        advice.append(f"lower --batch-size (now {args.batch_size})")
    if command == "train":
        advice.append("choose a smaller --model")
    if gpu:
        advice.append("use --device cpu")
    return (f"{command}: out of {memory} while {phase}{where}: {detail}"
            + (f"; {needs}" if needs else "") + (f"; {', or '.join(advice)}" if advice else ""))


def check_launch(args) -> None:
    """Several processes from ``mpiexec -n N`` are one job for ``train --distributed``
    alone; any other command (or train without it) would run N independent copies
    writing the same files."""
    processes = gpunet_distributed.launched_processes()
    if processes == 1 or (args.command == "train" and args.distributed):
        return
    if args.command == "train":
        raise UsageError(f"started as one of {processes} MPI processes (mpiexec -n "
                         f"{processes}) without --distributed: each would train its own copy "
                         "into the same --out; add --distributed (or run without mpiexec)")
    raise UsageError(f"{args.command}: started as one of {processes} MPI processes (mpiexec -n "
                     f"{processes}); it runs in one process: start it without mpiexec"
                     + (" (--workers runs trials in parallel)" if args.command == "tune" else ""))


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised while handling, a KeyboardInterrupt (Python
    wraps one raised during a class's creation in a RuntimeError, as matplotlib's
    import showed)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def fail(message: str, code: int) -> int:
    """Print the one-line error; in a distributed run, end every process with it (the
    others would wait for this one for ever)."""
    if gpunet_distributed.is_initialized() and gpunet_distributed.world().size > 1:
        gpunet_distributed.abort(message, code)
    # one write, newline included: under mpiexec (or PYTHONUNBUFFERED) two ranks' lines
    # would otherwise interleave, "line 1line 2\n\n"
    sys.stderr.write(f"gpunet: {message}\n")
    sys.stderr.flush()
    return code
