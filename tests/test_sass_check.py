"""bench/sass_check.py: the SASS reading behind `make kernels-check`."""
import glob
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))

import sass_check  # noqa: E402

SASS = """
	code for sm_90
		Function : conv2d_fwd
	.headerflags	@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                 /* 0x00000a00ff017b82 */
        /*0010*/                   LDG.E.128 R4, desc[UR8][R2.64] ;      /* 0x0000000802047981 */
        /*0020*/                   FFMA R5, R4, R4, R5 ;                  /* 0x0000000404057223 */
        /*0030*/              @!P0 FFMA.FTZ R6, R4, R4, R6 ;             /* 0x0000000404068223 */
        /*0040*/              @P1 BRA P2, 0x20 ;                          /* 0x0000002000007944 */
        /*0050*/                   CALL.REL.NOINC 0x70 ;                  /* 0x0000002000007944 */
        /*0060*/                   EXIT ;                                 /* 0x000000000000794d */
        /*0070*/                   NOP ;                                  /* 0x0000000000007918 */
		Function : bn_fwd_apply
        /*0000*/                   LDG.E.64 R2, desc[UR4][R2.64] ;       /* 0x0000000402027981 */
        /*0010*/                   CALL.REL.NOINC 0x30 ;                  /* 0x0000001000007944 */
        /*0020*/                   EXIT ;                                 /* 0x000000000000794d */
        /*0030*/                   IMAD R2, R2, R2, RZ ;                  /* 0x0000000202027224 */
        /*0040*/                   RET.REL.NODEC R4 0x0 ;                 /* 0x0000000004007950 */
"""

PTXAS = """ptxas info    : Compiling entry function 'conv2d_fwd' for 'sm_90'
ptxas info    : Function properties for conv2d_fwd
    0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers
ptxas info    : Compiling entry function 'bn_fwd_apply' for 'sm_90'
ptxas info    : Function properties for bn_fwd_apply
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 22 registers
"""


def _codes():
    resources = sass_check.parse_ptxas(PTXAS)
    codes = []
    for name, instructions in sass_check.parse_sass(SASS).items():
        codes.append(sass_check.summarise("k.cu", name, "sm_90", "float", instructions,
                                          resources[name]))
    return {code.kernel: code for code in codes}


def test_instruction_mix_registers_and_spills():
    codes = _codes()
    fwd, bn = codes["conv2d_fwd"], codes["bn_fwd_apply"]
    assert fwd.instructions == 7  # NOP left out
    assert fwd.fma == 2 and fwd.fma_share == pytest.approx(2 / 7)
    # the loop: from 0x20 back-branched to at 0x40, two FFMAs in three instructions
    assert (fwd.loop_instructions, fwd.loop_fma) == (3, 2)
    assert (bn.loop_instructions, bn.loop_fma) == (0, 0)
    assert fwd.widest_global_load == 128 and bn.widest_global_load == 64
    assert (fwd.registers, fwd.spill_bytes) == (128, 12)
    assert (bn.registers, bn.spill_bytes) == (22, 0)


def test_a_call_counts_only_where_a_routine_returns():
    codes = _codes()
    # sm_80 leaves some loops through a CALL.REL.NOINC that never returns: not a routine
    assert codes["conv2d_fwd"].calls == 0
    assert codes["bn_fwd_apply"].calls == 1


def test_failures_name_the_kernel_and_the_rule():
    problems = sass_check.failures(list(_codes().values()), min_ffma=0.40)
    text = "\n".join(problems)
    assert "bn_fwd_apply (k.cu, sm_90, float): 1 out-of-line CALL" in text
    assert "conv2d_fwd (k.cu, sm_90, float): 12 bytes of register spills" in text
    assert "conv2d_fwd (k.cu, sm_90, float): FFMA is 29% of 7 instructions, under 40%" in text
    assert len(problems) == 3


def test_a_tf32_kernel_needs_tensor_core_mmas():
    sass = SASS.replace("conv2d_fwd", "conv2d_fwd_tf32")
    code = sass_check.summarise("k.cu", "conv2d_fwd_tf32", "sm_90", "float",
                                sass_check.parse_sass(sass)["conv2d_fwd_tf32"], (100, 0))
    assert code.fma == 0  # FFMA is not what counts there
    assert sass_check.failures([code], 0.40) == [
        "conv2d_fwd_tf32 (k.cu, sm_90, float): no tensor-core MMA (HMMA) in a TF32 kernel"]
    hmma = sass.replace("FFMA.FTZ R6, R4, R4, R6", "HMMA.1688.F32.TF32 R4, R8, R12, R4")
    code = sass_check.summarise("k.cu", "conv2d_fwd_tf32", "sm_90", "float",
                                sass_check.parse_sass(hmma)["conv2d_fwd_tf32"], (100, 0))
    assert code.fma == 1 and code.loop_fma == 1 and not sass_check.failures([code], 0.40)


def test_a_split_tf32_kernel_is_held_to_tensor_core_mmas_too():
    """conv2d_fwd_tf32_split multiplies on tensor cores as conv2d_fwd_tf32 does: its
    HMMAs count, not its (absent) FFMAs."""
    hmma = SASS.replace("conv2d_fwd", "conv2d_fwd_tf32_split").replace(
        "FFMA.FTZ R6, R4, R4, R6", "HMMA.1688.F32.TF32 R4, R8, R12, R4")
    code = sass_check.summarise("k.cu", "conv2d_fwd_tf32_split", "sm_90", "float",
                                sass_check.parse_sass(hmma)["conv2d_fwd_tf32_split"], (100, 0))
    assert code.fma == 1 and not sass_check.failures([code], 0.40)
    assert sass_check.loop_ffma_cell(code) == "-"


def test_the_main_loop_floor_holds_the_square_tiles_only():
    """A 128 x 128 float GEMM (or its split) whose main loop is under --min-loop-ffma
    fails, naming the share; the 64 x 256 tiles and the direct kernels are not held."""
    for name, held in [("conv2d_fwd", True), ("conv2d_fwd_split", True),
                       ("conv2d_bwd_data", True), ("conv2d_bwd_weight", True),
                       ("conv2d_bwd_weight_vec", True), ("conv2d_bwd_weight_wide_vec", False),
                       ("conv2d_fwd_wide", False), ("conv2d_bwd_data_direct", False)]:
        code = sass_check.KernelCode("k.cu", name, "sm_90", "float", instructions=10, fma=5,
                                     loop_instructions=1000, loop_fma=556)
        problems = sass_check.failures([code], 0.40, min_loop_ffma=0.60)
        assert bool(problems) == held, name
        if held:
            assert problems == [f"{name} (k.cu, sm_90, float): the main loop is 55.6% FFMA "
                                f"(556 of 1000), under 60.0%"]
        assert sass_check.loop_ffma_cell(code) == ("-" if name.endswith("_direct") else "56%")


def test_the_ffma_rule_covers_the_conv_gemms_only():
    for name, gemm in [("conv2d_fwd", True), ("conv2d_bwd_data_wide", True),
                       ("conv2d_bwd_weight", True), ("conv2d_bwd_weight_reduce", False),
                       ("conv2d_bwd_data_direct", False),
                       ("conv2d_bwd_bias", False), ("bn_fwd_stats", False)]:
        code = sass_check.KernelCode("k.cu", name, "sm_90", "float", instructions=10, fma=1)
        assert bool(sass_check.failures([code], 0.40)) == gemm, name


def _tools_or_skip():
    if not all(sass_check.tool(name) for name in ("nvcc", "cuobjdump", "nvdisasm")):
        pytest.skip("nvcc, cuobjdump and nvdisasm are needed to compile and disassemble")


def test_a_64_bit_division_fails_the_check(tmp_path, capsys):
    """The kernels before this check divided 64-bit indices: the check must catch it."""
    _tools_or_skip()
    (tmp_path / "common.cuh").write_text("#pragma once\n")
    (tmp_path / "divide.cu").write_text(
        'extern "C" __global__ void split_index(const long long* i, long long* q, long long d)'
        " {\n    q[threadIdx.x] = i[threadIdx.x] / d;\n}\n")
    assert sass_check.main(["--kernels", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL split_index (divide.cu, sm_90, float)" in out and "out-of-line CALL" in out



RESOURCES = """
Resource usage:
 Common:
  GLOBAL:0
 Function conv2d_fwd:
  REG:147 STACK:0 SHARED:17408 LOCAL:0 CONSTANT[0]:576 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function bn_fwd_apply:
  REG:26 STACK:16 SHARED:0 LOCAL:0 CONSTANT[0]:556 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

PTX = """
.visible .entry conv2d_fwd(
	.param .u64 .ptr .align 1 conv2d_fwd_param_0
)
.maxntid 256, 1, 1
.minnctapersm 2
{
	ret;
}
.visible .entry bn_fwd_apply(
	.param .u64 .ptr .align 1 bn_fwd_apply_param_0
)
{
	ret;
}
"""


def test_resource_usage_and_launch_bounds_are_read():
    usage = sass_check.parse_resource_usage(RESOURCES)
    assert usage["conv2d_fwd"]["REG"] == 147 and usage["conv2d_fwd"]["SHARED"] == 17408
    assert usage["bn_fwd_apply"]["STACK"] == 16
    assert sass_check.parse_launch_bounds(PTX) == {"conv2d_fwd": (256, 2),
                                                   "bn_fwd_apply": (0, 0)}


def test_blocks_per_sm_follow_the_occupancy_rules():
    # 147 registers: 4864 a warp, 3 warps in each of the four 16384-register files:
    # 12 warps, one block of 8; at 128, 16 warps: two
    assert sass_check.blocks_per_sm(147, 17408, 256, "sm_90") == (1, "registers")
    assert sass_check.blocks_per_sm(128, 17408, 256, "sm_90") == (2, "registers")
    assert sass_check.blocks_per_sm(24, 1024, 256, "sm_80") == (8, "threads")
    # 48 KB + the 1 KB reserved a block: 3 blocks in sm_80's 164 KB, 4 in sm_90's 228
    assert sass_check.blocks_per_sm(32, 48 * 1024, 256, "sm_80") == (3, "shared memory")
    assert sass_check.blocks_per_sm(32, 48 * 1024, 256, "sm_90") == (4, "shared memory")


def test_stack_spills_and_too_few_blocks_fail_the_nvrtc_build():
    code = sass_check.KernelCode("k.cu", "conv2d_fwd", "sm_90", "float", instructions=10,
                                 fma=5, registers=147, build="nvrtc", stack=8,
                                 shared_static=17408, spill_stores=4, spill_loads=8,
                                 spill_bytes=12, threads=256, max_threads=256, min_blocks=2,
                                 blocks_per_sm=1, limited_by="registers")
    assert sass_check.failures([code], 0.40) == [
        "conv2d_fwd (k.cu, sm_90, float, NVRTC): a 8-byte stack frame",
        "conv2d_fwd (k.cu, sm_90, float, NVRTC): 1 block(s) of 256 threads an SM (147 "
        "registers, 17408 + 0 bytes shared; registers run out), under the 2 its launch "
        "bounds declare",
        "conv2d_fwd (k.cu, sm_90, float, NVRTC): 12 bytes of register spills (4 stored, "
        "8 loaded)"]


def _nvrtc_or_skip():
    _tools_or_skip()
    try:
        import cupy
        from cupy._core import core  # noqa: F401
        from cupy.cuda import compiler  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"CuPy's NVRTC compiler is needed for the build that runs: {exc}")
    if getattr(cupy, "IS_TEST_DOUBLE", False):
        pytest.skip("the NVRTC build needs the real CuPy, not the test double")


@pytest.fixture(scope="module")
def nvrtc_builds(tmp_path_factory):
    """Every kernel as CuPy's RawModule builds it (NVRTC), sm_80 and sm_90, float and
    double."""
    _nvrtc_or_skip()
    cuobjdump = sass_check.tool("cuobjdump")
    os.environ.setdefault("NVDISASM_PATH", os.path.dirname(sass_check.tool("nvdisasm")))
    workdir = str(tmp_path_factory.mktemp("nvrtc"))
    codes = []
    for path in sorted(glob.glob(os.path.join(sass_check.ROOT, "kernels", "*.cu"))):
        for arch in sass_check.ARCHS:
            for real in sass_check.TYPES:
                codes += sass_check.nvrtc_file(cuobjdump, path, arch, real, workdir)
    return codes


# The float convolution GEMMs that must run two blocks (16 warps) an SM, as
# bench/GPU.md's design says; the 128 x 128 backward passes and the double build
# need more than 128 registers a thread and declare one.
TWO_BLOCKS = {f"conv2d_{kernel}" for kernel in
              ("fwd", "fwd_wide", "fwd_tf32", "fwd_wide_split", "fwd_tf32_split",
               "bwd_data_wide", "bwd_data_tf32", "bwd_weight_wide", "bwd_weight_tf32")}


def test_what_cupy_builds_has_no_spill_no_stack_and_its_declared_occupancy(nvrtc_builds):
    problems = sass_check.failures(nvrtc_builds, min_ffma=0.40)
    assert not problems, "\n".join(problems)
    assert {code.kernel for code in nvrtc_builds} >= TWO_BLOCKS | {"bn_fwd_stats",
                                                                  "max_pool2d_fwd"}


def test_what_cupy_builds_meets_the_main_loop_floors(nvrtc_builds):
    """Issue 26: the square tiles' main loops of the NVRTC build, float, sm_80 and
    sm_90, at least MIN_LOOP_FFMA FFMA (85%), the weight gradient's included."""
    held = [code for code in nvrtc_builds if code.real == "float"
            and sass_check.SQUARE_TILES.match(code.kernel)]
    assert {(code.kernel, code.arch) for code in held} >= {
        (kernel, arch) for kernel in ("conv2d_fwd", "conv2d_fwd_split", "conv2d_bwd_data",
                                      "conv2d_bwd_weight", "conv2d_bwd_weight_vec")
        for arch in sass_check.ARCHS}
    problems = sass_check.failures(held, 0.40, sass_check.MIN_LOOP_FFMA)
    assert not problems, "\n".join(problems)
    assert sass_check.MIN_LOOP_FFMA >= 0.85


def test_the_float_conv_gemms_run_two_blocks_an_sm_as_designed(nvrtc_builds):
    short = [f"{code.kernel} ({code.arch}): {code.registers} registers, "
             f"{code.blocks_per_sm} block(s) an SM, {code.min_blocks} declared"
             for code in nvrtc_builds if code.real == "float" and code.kernel in TWO_BLOCKS
             and (code.blocks_per_sm < 2 or code.min_blocks != 2)]
    assert not short, "\n".join(short)
