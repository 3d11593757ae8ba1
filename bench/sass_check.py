"""Compile every kernel file with nvcc and read the machine code: no GPU needed.

For each ``kernels/*.cu``, for sm_80 and sm_90, in float and double: ``nvcc
--cubin`` with ``-Xptxas -v`` (registers, spills) must print no warning; the cubin is
disassembled with ``cuobjdump --dump-sass`` and each kernel's instructions are
counted. Fails (exit 1) on

- any nvcc or ptxas warning, register spills included;
- any out-of-line call in a kernel: a ``CALL`` to a routine that ends in ``RET``, as
  a 64-bit integer division or a floating-point division's slow path, dozens of
  instructions each, where an inner loop cannot afford one;
- a convolution GEMM kernel of the float build whose FFMA share of its instructions
  is under ``--min-ffma`` (40%): a main loop that is not mostly FMA is bound by its
  index arithmetic; for the opt-in ``_tf32`` kernels, one without tensor-core MMAs
  (HMMA), which their FMA columns count instead.

Prints the sm_90 table (``--json FILE`` also writes every build's), with the share
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
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("sm_80", "sm_90")
TYPES = {"float": "float", "double": "double"}  # real_t -> acc_t
GEMM_KERNELS = re.compile(r"^conv2d_(fwd|bwd_data|bwd_weight)(_\w+)?$")  # and _tf32
GEMM_EXCLUDED = re.compile(r"_reduce$")
FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
HEX = re.compile(r"0x([0-9a-f]+)")
PTXAS_ENTRY = re.compile(r"(?:Compiling entry function|Function properties for) '?(\w+)'?")
PTXAS_REGS = re.compile(r"Used (\d+) registers")
PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


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


def fma_opcode(kernel: str, real: str) -> str:
    """What does a kernel's multiply-adds: FFMA or DFMA, or tensor cores' HMMA for the
    float build's ``_tf32`` kernels."""
    if real != "float":
        return "DFMA"
    return "HMMA" if kernel.endswith("_tf32") else "FFMA"


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


def failures(codes: list[KernelCode], min_ffma: float) -> list[str]:
    problems = []
    for code in codes:
        where = f"{code.kernel} ({code.file}, {code.arch}, {code.real})"
        if code.calls:
            problems.append(f"{where}: {code.calls} out-of-line CALL instruction(s)")
        if code.spill_bytes:
            problems.append(f"{where}: {code.spill_bytes} bytes of register spills")
        if code.real != "float" or not GEMM_KERNELS.match(code.kernel) \
                or GEMM_EXCLUDED.search(code.kernel):
            continue
        if fma_opcode(code.kernel, code.real) == "HMMA":
            if not code.fma:
                problems.append(f"{where}: no tensor-core MMA (HMMA) in a TF32 kernel")
        elif code.fma_share < min_ffma:
            problems.append(f"{where}: FFMA is {code.fma_share:.0%} of {code.instructions} "
                            f"instructions, under {min_ffma:.0%}")
    return problems


def table(codes: list[KernelCode], arch: str) -> str:
    rows = [f"{'kernel':28} {'type':6} {'instr':>6} {'FMA':>5} {'FMA %':>6} {'loop':>5} "
            f"{'loop FMA %':>10} {'calls':>5} {'LDG bits':>8} {'regs':>5} {'spill':>5}"]
    for code in codes:
        if code.arch == arch:
            rows.append(f"{code.kernel:28} {code.real:6} {code.instructions:6d} {code.fma:5d} "
                        f"{code.fma_share:6.0%} {code.loop_instructions:5d} "
                        f"{code.loop_fma_share:10.0%} {code.calls:5d} "
                        f"{code.widest_global_load:8d} {code.registers:5d} {code.spill_bytes:5d}")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", default=os.path.join(ROOT, "kernels"))
    parser.add_argument("--min-ffma", type=float, default=0.40)
    parser.add_argument("--json", help="also write every build's table to this file")
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
                    kernels, warnings = compile_file(nvcc, cuobjdump, path, arch, real, workdir)
                    if warnings:
                        problems.append(f"{os.path.basename(path)} ({arch}, {real}) "
                                        f"warns:\n{warnings}")
                    codes += kernels
    problems += failures(codes, args.min_ffma)
    print(table(codes, "sm_90"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(code) | {"fma_share": round(code.fma_share, 4),
                                       "loop_fma_share": round(code.loop_fma_share, 4)}
                       for code in codes], f, indent=1)
    for problem in problems:
        print("FAIL", problem)
    print(f"{len(codes)} kernel builds checked ({', '.join(ARCHS)}; float, double): "
          + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
