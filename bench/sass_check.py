"""Compile every kernel file as CuPy does and with nvcc, and read the machine code:
no GPU needed.

For each ``kernels/*.cu``, for sm_80 and sm_90, in float and double, two builds:

- NVRTC, what runs: the source and options gpunet's ``RawModule`` gets, through
  CuPy's own compile path (``cupy._core.core.compile_with_cache``, which adds CuPy's
  include paths, ``-ftz=true``, ``-arch=sm_XX`` and
  ``--device-as-default-execution-space``), the architecture given instead of asked
  of a device; ``cuobjdump --dump-resource-usage`` gives each kernel's registers,
  static shared memory and stack, the SASS its local-memory (spill) traffic, the PTX
  its ``__launch_bounds__``;
- nvcc 13.0 ``--cubin`` with ``-Xptxas -v``, which must print no warning.

Each cubin is disassembled with ``cuobjdump --dump-sass`` and each kernel's
instructions are counted. Fails (exit 1) on

- any nvcc or ptxas warning, register spills included;
- in the NVRTC build, any stack frame or local-memory load or store (a spill), and a
  kernel whose resident blocks per SM, from its registers, shared memory (static and
  the launcher's dynamic) and block size, fall under the minimum its
  ``__launch_bounds__`` declares (1 where it declares none);
- any out-of-line call in a kernel: a ``CALL`` to a routine that ends in ``RET``, as
  a 64-bit integer division or a floating-point division's slow path, dozens of
  instructions each, where an inner loop cannot afford one;
- a convolution GEMM kernel of the float build whose FFMA share of its instructions
  is under ``--min-ffma`` (40%): a main loop that is not mostly FMA is bound by its
  index arithmetic (the ``_direct`` kernels, not GEMMs, excepted); for the opt-in
  ``_tf32`` kernels, one without tensor-core MMAs
  (HMMA), which their FMA columns count instead;
- a square-tile (128 x 128) float GEMM whose main loop (the loop with the most FFMA)
  is under ``--min-loop-ffma`` FFMA (85%, issue 26's target, which every square
  tile's loop reaches: a peeled pipeline, operands stepped through registers, window
  tests on bit masks, the weight gradient's reduction index carried step to step).
  The ``--markdown`` table shows each float GEMM's main-loop FFMA share.

Prints the NVRTC build's resources and blocks per SM for both architectures
(``--markdown``: as bench/GPU.md's table) and the nvcc sm_90 instruction table
(``--json FILE`` also writes every build's), with the share
of FMA in each kernel's busiest loop: in a GEMM's main loop that share bounds the
fraction of the FMA peak an SM can issue (bench/GPU.md's napkin estimate). The SASS
shows what will run, not how fast: the speed comes only from a GPU.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's gpunet: its launchers' block sizes and options

from gpunet.cuda import conv2d as cuda_conv2d  # noqa: E402
from gpunet.cuda import runtime  # noqa: E402

ARCHS = ("sm_80", "sm_90")
TYPES = {"float": "float", "double": "double"}  # real_t -> acc_t
GEMM_KERNELS = re.compile(r"^conv2d_(fwd|bwd_data|bwd_weight)(_\w+)?$")  # and _tf32
# not GEMMs: the split-K sums, and the direct kernels for few channels, which load
# one weight and one dy value per multiply-add by construction (chosen by
# gpunet.cuda.conv2d_plan only where a GEMM tile would issue several times the
# useful work); the other checks still hold them
GEMM_EXCLUDED = re.compile(r"(_reduce|_direct)$")
# the 128 x 128 float GEMMs whose main loop is held to --min-loop-ffma (the _tf32 ones
# multiply on tensor cores), the weight gradient's with dy read as vectors (_vec) too
SQUARE_TILES = re.compile(r"^conv2d_(fwd|bwd_data|bwd_weight)(_split)?$|^conv2d_bwd_weight_vec$")
# their floor (--min-loop-ffma)
MIN_LOOP_FFMA = 0.85
FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
HEX = re.compile(r"0x([0-9a-f]+)")
PTXAS_ENTRY = re.compile(r"(?:Compiling entry function|Function properties for) '?(\w+)'?")
PTXAS_REGS = re.compile(r"Used (\d+) registers")
PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
RESOURCE_FUNCTION = re.compile(r"^\s*Function\s+(\w+):")
RESOURCE_FIELD = re.compile(r"([A-Z]+(?:\[\d+\])?):(\d+)")
PTX_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(")
PTX_MAXNTID = re.compile(r"\.maxntid\s+(\d+)\s*,\s*(\d+)\s*,\s*(\d+)")
PTX_MINBLOCKS = re.compile(r"\.minnctapersm\s+(\d+)")

# What one SM holds (CUDA C++ Programming Guide, "Technical Specifications per Compute
# Capability"; 8.0: A100, 9.0: H100/H200). Shared memory is the largest carveout,
# which the driver picks when a kernel needs it.
SM_LIMITS = {
    "sm_80": {"registers": 65536, "shared": 164 * 1024, "threads": 2048, "blocks": 32},
    "sm_90": {"registers": 65536, "shared": 228 * 1024, "threads": 2048, "blocks": 32},
}
REGISTER_UNIT = 256      # registers are allocated to a warp 256 at a time
SUB_PARTITIONS = 4       # from one of four register files: a warp's never straddle two
SHARED_UNIT = 128        # shared memory is allocated to a block 128 bytes at a time
SHARED_RESERVED = 1024   # plus 1 KB the runtime reserves per block (sm_80 and later)
# Kernels launched with dynamic shared memory: BLOCK elements of the launch's dtype
# (gpunet/cuda/conv2d.py, batchnorm.py: shared_mem=BLOCK * itemsize).
DYNAMIC_SHARED_KERNELS = {"conv2d_bwd_bias", "bn_fwd_stats", "bn_bwd_reduce"}


@dataclass
class KernelCode:
    """One kernel's SASS instruction mix and ptxas resource use."""
    file: str
    kernel: str
    arch: str
    real: str
    instructions: int = 0
    fma: int = 0            # FFMA in the float build (HMMA in _tf32 kernels), DFMA in double
    calls: int = 0
    widest_global_load: int = 0  # bits
    registers: int = 0
    spill_bytes: int = 0
    loop_instructions: int = 0   # the loop with the most FMA (a GEMM's main loop)
    loop_fma: int = 0
    build: str = "nvcc"          # or "nvrtc": CuPy's build, what runs
    # The NVRTC build's resources, from cuobjdump, the SASS, the PTX and the launcher:
    stack: int = 0               # bytes a thread
    shared_static: int = 0       # bytes a block
    shared_dynamic: int = 0      # bytes a block, as the launcher asks
    spill_stores: int = 0        # bytes stored to local memory (STL), statically
    spill_loads: int = 0         # bytes loaded from it (LDL)
    threads: int = 0             # a block, as the launcher launches it
    max_threads: int = 0         # __launch_bounds__'s first argument (0: none)
    min_blocks: int = 0          # its second (0: none)
    blocks_per_sm: int = 0
    limited_by: str = ""         # what bounds blocks_per_sm

    @property
    def fma_share(self) -> float:
        return self.fma / self.instructions if self.instructions else 0.0

    @property
    def loop_fma_share(self) -> float:
        return self.loop_fma / self.loop_instructions if self.loop_instructions else 0.0


def tool(name: str) -> str | None:
    """``name`` on PATH, or from the nvidia-cuda-* wheels of this environment."""
    found = shutil.which(name)
    if found:
        return found
    purelib = sysconfig.get_paths()["purelib"]
    for candidate in sorted(glob.glob(os.path.join(purelib, "nvidia", "cu*", "bin", name))):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def load_width(opcode: str) -> int:
    """Bits moved by one LDG: ``LDG.E.128`` 128, ``LDG.E.64`` 64, ``LDG.E`` 32."""
    for part in opcode.split(".")[1:]:
        if part in ("64", "128"):
            return int(part)
        if part in ("U8", "S8"):
            return 8
        if part in ("U16", "S16"):
            return 16
    return 32


Instruction = tuple  # (address, opcode, operands)


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    """The instructions of each function of ``cuobjdump --dump-sass`` output, in
    order (NOPs left out: they only pad the end of each function)."""
    functions: dict[str, list[Instruction]] = {}
    current = None
    for line in text.splitlines():
        match = FUNCTION.match(line)
        if match:
            current = functions.setdefault(match.group(1), [])
            continue
        match = INSTRUCTION.match(line)
        if match and current is not None and match.group(3) != "NOP":
            current.append((int(match.group(1), 16), match.group(3), match.group(4)))
    return functions


def busiest_loop(instructions: list[Instruction], fma: str) -> tuple[int, int]:
    """``(instructions, FMAs)`` of the loop (a backward branch and the code it jumps
    back over) holding the most FMAs: a GEMM's main loop."""
    best = (0, 0)
    for address, opcode, operands in instructions:
        targets = HEX.findall(operands)
        if opcode.split(".")[0] != "BRA" or not targets or int(targets[-1], 16) >= address:
            continue
        body = [op for a, op, _ in instructions if int(targets[-1], 16) <= a <= address]
        count = sum(op.split(".")[0] == fma for op in body)
        if count > best[1]:
            best = (len(body), count)
    return best


def parse_ptxas(text: str) -> dict[str, tuple[int, int]]:
    """``{kernel: (registers, spill bytes)}`` from ``-Xptxas -v`` output."""
    result, current = {}, None
    for line in text.splitlines():
        match = PTXAS_ENTRY.search(line)
        if match:
            current = match.group(1)
            result.setdefault(current, (0, 0))
        elif current is not None:
            regs, spills = PTXAS_REGS.search(line), PTXAS_SPILLS.search(line)
            registers, spill = result[current]
            if regs:
                registers = int(regs.group(1))
            if spills:
                spill = int(spills.group(1)) + int(spills.group(2))
            result[current] = (registers, spill)
    return result


def parse_resource_usage(text: str) -> dict[str, dict[str, int]]:
    """``{kernel: {"REG": .., "STACK": .., "SHARED": .., "LOCAL": .., ...}}`` from
    ``cuobjdump --dump-resource-usage``."""
    result, current = {}, None
    for line in text.splitlines():
        match = RESOURCE_FUNCTION.match(line)
        if match:
            current = result.setdefault(match.group(1), {})
        elif current is not None:
            current.update((key, int(value)) for key, value in RESOURCE_FIELD.findall(line))
    return result


def parse_launch_bounds(ptx: str) -> dict[str, tuple[int, int]]:
    """``{kernel: (max threads, min blocks)}`` from the PTX (0 where undeclared)."""
    result = {}
    parts = PTX_ENTRY.split(ptx)  # [before, name, rest, name, rest, ...]
    for name, rest in zip(parts[1::2], parts[2::2]):
        # the directives come between the parameter list and the body's first '{'
        header = rest.split("{", 1)[0]
        threads, blocks = PTX_MAXNTID.search(header), PTX_MINBLOCKS.search(header)
        result[name] = ((int(threads.group(1)) * int(threads.group(2)) * int(threads.group(3)))
                        if threads else 0, int(blocks.group(1)) if blocks else 0)
    return result


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def blocks_per_sm(registers: int, shared: int, threads: int, arch: str) -> tuple[int, str]:
    """``(blocks, limit)``: how many blocks of ``threads`` threads, ``registers`` a
    thread and ``shared`` bytes of shared memory one SM of ``arch`` holds at once, and
    which resource runs out first (the occupancy calculator's rules)."""
    limits = SM_LIMITS[arch]
    warps = -(-threads // 32)
    per_warp = round_up(max(registers, 1) * 32, REGISTER_UNIT)
    warps_by_registers = limits["registers"] // SUB_PARTITIONS // per_warp * SUB_PARTITIONS
    bounds = {"registers": warps_by_registers // warps,
              "shared memory": limits["shared"] // (round_up(shared, SHARED_UNIT)
                                                    + SHARED_RESERVED),
              "threads": limits["threads"] // threads,
              "blocks": limits["blocks"]}
    limit = min(bounds, key=bounds.get)
    return bounds[limit], limit


def launch_shape(kernel: str, real: str) -> tuple[int, int]:
    """``(threads a block, dynamic shared bytes)`` as gpunet/cuda launches ``kernel``."""
    threads = cuda_conv2d.GEMM_BLOCK[0] if GEMM_KERNELS.match(kernel) \
        and not GEMM_EXCLUDED.search(kernel) else runtime.BLOCK
    itemsize = 4 if real == "float" else 8
    return threads, runtime.BLOCK * itemsize if kernel in DYNAMIC_SHARED_KERNELS else 0


def fma_opcode(kernel: str, real: str) -> str:
    """What does a kernel's multiply-adds: FFMA or DFMA, or tensor cores' HMMA for the
    float build's ``_tf32`` kernels."""
    if real != "float":
        return "DFMA"
    return "HMMA" if "_tf32" in kernel else "FFMA"  # _tf32 and _tf32_split


def summarise(file: str, name: str, arch: str, real: str, instructions: list[Instruction],
              resources: tuple[int, int]) -> KernelCode:
    code = KernelCode(file, name, arch, real, registers=resources[0], spill_bytes=resources[1])
    fma = fma_opcode(name, real)
    returns = 0
    for _, opcode, _ in instructions:
        code.instructions += 1
        base = opcode.split(".")[0]
        if base == fma:
            code.fma += 1
        elif base == "CALL":
            code.calls += 1
        elif base == "RET":
            returns += 1
        elif base == "LDG":
            code.widest_global_load = max(code.widest_global_load, load_width(opcode))
        elif base == "STL":
            code.spill_stores += load_width(opcode) // 8
        elif base == "LDL":
            code.spill_loads += load_width(opcode) // 8
    if not returns:
        # A CALL with no RET anywhere is not a routine: sm_80 code leaves some loops
        # that end in a barrier through a CALL.REL.NOINC that never returns.
        code.calls = 0
    code.loop_instructions, code.loop_fma = busiest_loop(instructions, fma)
    return code


def compile_file(nvcc: str, cuobjdump: str, path: str, arch: str, real: str,
                 workdir: str) -> tuple[list[KernelCode], str]:
    """The kernels of one build, and nvcc's warnings ('' when there are none)."""
    cubin = os.path.join(workdir, "k.cubin")
    command = [nvcc, "--cubin", f"-arch={arch}", "-O3", "-std=c++17", "-Xptxas", "-v",
               "-Xptxas", "-warn-spills", f"-Dreal_t={real}", f"-Dacc_t={TYPES[real]}",
               f"-I{os.path.dirname(path)}", "-o", cubin, path]
    done = subprocess.run(command, capture_output=True, text=True)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"nvcc failed on {path} ({arch}, {real}):\n{log}")
    warnings = "\n".join(line for line in log.splitlines()
                         if "warning" in line.lower() and "ptxas info" not in line)
    sass = subprocess.run([cuobjdump, "--dump-sass", cubin], capture_output=True, text=True,
                          check=True).stdout
    resources = parse_ptxas(log)
    kernels = []
    for name, instructions in sorted(parse_sass(sass).items()):
        kernels.append(summarise(os.path.basename(path), name, arch, real, instructions,
                                 resources.get(name, (0, 0))))
    return kernels, warnings


def cupy_compile(source: str, options: tuple, arch: str) -> tuple[bytes, str, tuple]:
    """``(cubin, PTX, NVRTC options)``: what ``cupy.RawModule(code=source,
    options=options)`` builds on a device of ``arch``, through CuPy's own
    ``compile_with_cache``, with only what needs a driver replaced: the per-device
    lookup of the ``-arch`` option (CuPy's own function, unmemoised) and the loading
    of the cubin (captured instead); CUPY_CACHE_IN_MEMORY keeps CuPy's disk cache out."""
    import types
    from unittest import mock

    import cupy  # the real one: the test double has no compiler
    if getattr(cupy, "IS_TEST_DOUBLE", False):
        raise RuntimeError("the NVRTC build needs the real CuPy, not tests/cupy_double")
    from cupy._core import core
    from cupy.cuda import compiler, function, nvrtc

    built = {}

    class Program(compiler._NVRTCProgram):
        def compile(self, options=(), log_stream=None):
            result = super().compile(options, log_stream)
            built["options"], built["ptx"] = options, nvrtc.getPTX(self.ptr)
            return result

    class Module(function.Module):
        def load(self, cubin):
            built["cubin"] = cubin

        def _set_mapping(self, mapping):
            pass

    unmemoised = getattr(compiler._get_arch_for_options_for_nvrtc, "__wrapped__",
                         compiler._get_arch_for_options_for_nvrtc)
    with mock.patch.dict(os.environ, {"CUPY_CACHE_IN_MEMORY": "1"}), \
            mock.patch.object(compiler, "_get_arch_for_options_for_nvrtc", unmemoised), \
            mock.patch.object(compiler, "_NVRTCProgram", Program), \
            mock.patch.object(compiler, "function", types.SimpleNamespace(Module=Module)):
        # as cupy/_core/raw.pyx's _get_raw_module calls it, the architecture given
        core.compile_with_cache(source, tuple(options), arch=arch.removeprefix("sm_"),
                                prepend_cupy_headers=False, backend="nvrtc",
                                translate_cucomplex=False, enable_cooperative_groups=False,
                                name_expressions=None, log_stream=None, jitify=False)
    cubin, ptx = built["cubin"], built["ptx"]
    # CuPy's getCUBIN drops the last byte as if it ended a string: the high byte of
    # the last program header's alignment, a zero, which cuobjdump wants back
    phoff, = struct.unpack_from("<Q", cubin, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", cubin, 0x36)
    cubin += b"\0" * max(0, phoff + phentsize * phnum - len(cubin))
    return cubin, ptx.decode() if isinstance(ptx, bytes) else ptx, built["options"]


def nvrtc_version() -> str:
    from cupy.cuda import nvrtc
    return ".".join(map(str, nvrtc.getVersion()))


def cupy_source(path: str, real: str) -> tuple[str, tuple]:
    """The source and options gpunet's launchers hand RawModule for ``path``."""
    dtype = "float32" if real == "float" else "float64"
    options = runtime.compile_options(dtype)
    folder = os.path.dirname(os.path.abspath(path))
    if folder == os.path.abspath(runtime.kernel_dir()):
        return runtime.source(os.path.basename(path)[:-3]), options
    with open(path) as f:  # another folder (the tests'): its own headers
        return f.read(), tuple(o for o in options if not o.startswith("-I")) + (f"-I{folder}",)


def nvrtc_file(cuobjdump: str, path: str, arch: str, real: str,
               workdir: str) -> list[KernelCode]:
    """The kernels of one NVRTC build, as CuPy builds them, with their resources."""
    source, options = cupy_source(path, real)
    cubin_bytes, ptx, _ = cupy_compile(source, options, arch)
    cubin = os.path.join(workdir, "nvrtc.cubin")
    with open(cubin, "wb") as f:
        f.write(cubin_bytes)
    usage = parse_resource_usage(subprocess.run(
        [cuobjdump, "--dump-resource-usage", cubin], capture_output=True, text=True,
        check=True).stdout)
    sass = subprocess.run([cuobjdump, "--dump-sass", cubin], capture_output=True, text=True,
                          check=True).stdout
    bounds = parse_launch_bounds(ptx)
    kernels = []
    for name, instructions in sorted(parse_sass(sass).items()):
        res = usage.get(name, {})
        code = summarise(os.path.basename(path), name, arch, real, instructions,
                         (res.get("REG", 0), 0))
        code.build, code.stack, code.shared_static = "nvrtc", res.get("STACK", 0), \
            res.get("SHARED", 0)
        code.spill_bytes = code.spill_stores + code.spill_loads
        code.threads, code.shared_dynamic = launch_shape(name, real)
        code.max_threads, code.min_blocks = bounds.get(name, (0, 0))
        code.blocks_per_sm, code.limited_by = blocks_per_sm(
            code.registers, code.shared_static + code.shared_dynamic, code.threads, arch)
        kernels.append(code)
    return kernels


def loop_ffma_cell(code: KernelCode) -> str:
    """The main-loop FFMA share of a float FFMA GEMM, else ``-``."""
    if code.real != "float" or not GEMM_KERNELS.match(code.kernel) \
            or GEMM_EXCLUDED.search(code.kernel) or "_tf32" in code.kernel:
        return "-"
    return f"{code.loop_fma_share:.0%}"


def failures(codes: list[KernelCode], min_ffma: float, min_loop_ffma: float = 0.0) -> list[str]:
    problems = []
    for code in codes:
        where = f"{code.kernel} ({code.file}, {code.arch}, {code.real}" \
            + (", NVRTC)" if code.build == "nvrtc" else ")")
        if code.build == "nvrtc":
            problems += occupancy_failures(code, where)
        if code.calls:
            problems.append(f"{where}: {code.calls} out-of-line CALL instruction(s)")
        if code.spill_bytes:
            problems.append(f"{where}: {code.spill_bytes} bytes of register spills"
                            + (f" ({code.spill_stores} stored, {code.spill_loads} loaded)"
                               if code.build == "nvrtc" else ""))
        if code.real != "float" or not GEMM_KERNELS.match(code.kernel) \
                or GEMM_EXCLUDED.search(code.kernel):
            continue
        if fma_opcode(code.kernel, code.real) == "HMMA":
            if not code.fma:
                problems.append(f"{where}: no tensor-core MMA (HMMA) in a TF32 kernel")
        elif code.fma_share < min_ffma:
            problems.append(f"{where}: FFMA is {code.fma_share:.0%} of {code.instructions} "
                            f"instructions, under {min_ffma:.0%}")
        if SQUARE_TILES.match(code.kernel) and code.loop_fma_share < min_loop_ffma:
            problems.append(f"{where}: the main loop is {code.loop_fma_share:.1%} FFMA "
                            f"({code.loop_fma} of {code.loop_instructions}), under "
                            f"{min_loop_ffma:.1%}")
    return problems


def occupancy_failures(code: KernelCode, where: str) -> list[str]:
    problems = []
    if code.stack:
        problems.append(f"{where}: a {code.stack}-byte stack frame")
    if code.max_threads and code.threads > code.max_threads:
        problems.append(f"{where}: launched with {code.threads} threads, over its "
                        f"__launch_bounds__ of {code.max_threads}")
    wanted = max(code.min_blocks, 1)
    if code.blocks_per_sm < wanted:
        problems.append(f"{where}: {code.blocks_per_sm} block(s) of {code.threads} threads an "
                        f"SM ({code.registers} registers, {code.shared_static} + "
                        f"{code.shared_dynamic} bytes shared; {code.limited_by} run out), "
                        f"under the {wanted} its launch bounds declare")
    return problems


def resource_table(codes: list[KernelCode], markdown: bool = False) -> str:
    """The NVRTC build's resources and blocks per SM, both architectures."""
    head = ["kernel", "type", "arch", "regs", "shared (static + dynamic)", "stack",
            "spill st/ld", "threads", "declared min blocks", "blocks/SM", "limited by",
            "main-loop FFMA"]
    rows = []
    for code in sorted((c for c in codes if c.build == "nvrtc"),
                       key=lambda c: (c.file, c.kernel, c.real, c.arch)):
        rows.append([code.kernel, code.real, code.arch, str(code.registers),
                     f"{code.shared_static} + {code.shared_dynamic}", str(code.stack),
                     f"{code.spill_stores}/{code.spill_loads}", str(code.threads),
                     str(code.min_blocks or "-"), str(code.blocks_per_sm), code.limited_by,
                     loop_ffma_cell(code)])
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in [head, *rows])


def table(codes: list[KernelCode], arch: str) -> str:
    rows = [f"{'kernel':28} {'type':6} {'instr':>6} {'FMA':>5} {'FMA %':>6} {'loop':>5} "
            f"{'loop FMA %':>10} {'calls':>5} {'LDG bits':>8} {'regs':>5} {'spill':>5}"]
    for code in codes:
        if code.arch == arch and code.build == "nvcc":
            rows.append(f"{code.kernel:28} {code.real:6} {code.instructions:6d} {code.fma:5d} "
                        f"{code.fma_share:6.0%} {code.loop_instructions:5d} "
                        f"{code.loop_fma_share:10.0%} {code.calls:5d} "
                        f"{code.widest_global_load:8d} {code.registers:5d} {code.spill_bytes:5d}")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", default=os.path.join(ROOT, "kernels"))
    parser.add_argument("--min-ffma", type=float, default=0.40)
    parser.add_argument("--min-loop-ffma", type=float, default=MIN_LOOP_FFMA,
                        help="the least main-loop FFMA share of a 128 x 128 float GEMM")
    parser.add_argument("--json", help="also write every build's table to this file")
    parser.add_argument("--markdown", action="store_true",
                        help="print the NVRTC resource table as markdown (bench/GPU.md)")
    args = parser.parse_args(argv)
    nvcc, cuobjdump = os.environ.get("NVCC") or tool("nvcc"), tool("cuobjdump")
    nvdisasm = tool("nvdisasm")  # what cuobjdump --dump-sass runs
    for name, found in (("nvcc", nvcc), ("cuobjdump", cuobjdump), ("nvdisasm", nvdisasm)):
        if not found:
            print(f"sass_check: {name} not found (PATH, or the nvidia-cuda-* wheels of "
                  f"{sys.prefix}: pip install 'cuda-toolkit[cuobjdump,nvdisasm]')",
                  file=sys.stderr)
            return 2
    os.environ["NVDISASM_PATH"] = os.path.dirname(nvdisasm)
    codes, problems = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for path in sorted(glob.glob(os.path.join(args.kernels, "*.cu"))):
            for arch in ARCHS:
                for real in TYPES:
                    codes += nvrtc_file(cuobjdump, path, arch, real, workdir)
                    kernels, warnings = compile_file(nvcc, cuobjdump, path, arch, real, workdir)
                    if warnings:
                        problems.append(f"{os.path.basename(path)} ({arch}, {real}) "
                                        f"warns:\n{warnings}")
                    codes += kernels
    problems += failures(codes, args.min_ffma, args.min_loop_ffma)
    print(f"NVRTC {nvrtc_version()} (CuPy's RawModule build, what runs):")
    print(resource_table(codes, args.markdown))
    print("\nnvcc, sm_90:")
    print(table(codes, "sm_90"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(code) | {"fma_share": round(code.fma_share, 4),
                                       "loop_fma_share": round(code.loop_fma_share, 4)}
                       for code in codes], f, indent=1)
    for problem in problems:
        print("FAIL", problem)
    print(f"{len(codes)} kernel builds checked (NVRTC and nvcc; {', '.join(ARCHS)}; float, "
          f"double): " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
