"""``gpunet`` / ``python -m gpunet``: train, tune, evaluate, summary, gradcheck, bench, info.

The commands map their flags to library calls and print; bad arguments or files print
one line and exit with status 2; no traceback.
"""
from __future__ import annotations

import sys
import warnings

from .. import backend, config
from .. import distributed as gpunet_distributed
from ..data import DatasetError
from ..io import CheckpointError
from ..recipe.training import one_line_warning
from ..train import NonFiniteError
from .errors import check_launch, fail, interrupted, out_of_memory_message
from .inspection import cmd_bench, cmd_evaluate, cmd_gradcheck, cmd_info, cmd_summary
from .parser import UsageError, build_parser, given_flags
from .training import cmd_train, cmd_tune

__all__ = ["main", "build_parser", "UsageError", "COMMANDS"]

COMMANDS = {"train": cmd_train, "tune": cmd_tune, "evaluate": cmd_evaluate,
            "summary": cmd_summary, "gradcheck": cmd_gradcheck, "bench": cmd_bench,
            "info": cmd_info}


def main(argv=None) -> int:
    try:
        return _run(argv)
    finally:
        _forget_interrupts_we_handled()


def _forget_interrupts_we_handled() -> None:
    # CPython remembers, process-wide, a KeyboardInterrupt that left code run from a
    # string (a namedtuple's or dataclass's generated methods, made while an import
    # such as matplotlib's was under way) even when we caught it later, and then
    # kills the process with SIGINT at exit instead of our status 130 or 0 when run as
    # `python -m gpunet` (Python/pythonrun.c, run_eval_code_obj, read by Py_RunMain;
    # seen as 1 Ctrl-C in ~90). Running any string clears that memory; what we did
    # not handle still propagates and sets it again.
    exec("pass")


def _run(argv) -> int:
    warnings.formatwarning = one_line_warning
    argv = sys.argv[1:] if argv is None else list(argv)
    args = None
    try:
        parser = build_parser()
        if not argv:  # as git: the commands, and a failure status
            print(parser.format_help(), end="")
            return 1
        args = parser.parse_args(argv)
        # --device replaces GPUNET_DEVICE; every other variable is refused here, whichever
        # the command reads, before anything starts
        config.check_environment(skip=("device",) if getattr(args, "device", None) else ())
        backend.tune_cpu_allocator()
        subparser = {"train": parser.train_parser, "tune": parser.tune_parser}.get(args.command)
        args.given = given_flags(subparser, argv) if subparser else set()
        check_launch(args)
        return COMMANDS[args.command](args)
    except (UsageError, DatasetError, CheckpointError, backend.DeviceError, ValueError,
            TypeError, OSError, ImportError, gpunet_distributed.DistributedError) as exc:
        return fail(f"error: {exc}", 2)
    except NonFiniteError as exc:
        return fail(f"training stopped: {exc}", 1)
    except MemoryError as exc:  # CuPy's OutOfMemoryError is one too
        return fail(out_of_memory_message(args, exc), 1)
    except KeyboardInterrupt:
        if not gpunet_distributed.end_interrupted("gpunet: interrupted"):
            print("gpunet: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one line, the traceback on request
        if interrupted(exc):
            if not gpunet_distributed.end_interrupted("gpunet: interrupted"):
                print("gpunet: interrupted", file=sys.stderr)
            return 130
        if config.get("traceback"):
            raise
        return fail(f"internal error: {type(exc).__name__}: {exc} (a bug in gpunet: please "
                    "report it; GPUNET_TRACEBACK=1 shows where)", 1)
