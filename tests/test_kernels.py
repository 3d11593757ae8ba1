"""The CUDA kernels against the textbook xp path of gpunet.ops, on the same inputs.

The oracle is ``use_kernels=False`` with the CPU accelerators switched off (as
``GPUNET_CPU_ACCEL=0``; the ``device`` and ``emulated`` fixtures do it): on NumPy
arrays it would otherwise run gpunet/cpu, another optimised path, not the textbook one.

Without a GPU, each kernel runs on the CPU through tests/cuda_emulator (the .cu
source compiled as C++, a block's threads as fibers meeting at __syncthreads), driven by
the real launchers in gpunet/cuda. Outputs are poisoned with NaN before every
launch, so an element a kernel fails to write shows; every kernel runs twice and
must give bitwise-equal results. On a GPU the same comparisons run on CuPy.
"""
import ctypes
import re

import numpy
import pytest

from gpunet import backend, ops
from gpunet.benchmarks import awkward
from gpunet.cuda import batchnorm as bn_kernels
from gpunet.cuda import conv2d as conv_kernels
from gpunet.cuda import conv2d_plan as conv_plan
from gpunet.cuda import pool2d as pool_kernels
from gpunet.cuda import runtime

from . import cuda_emulator
from .helpers import CUPY_DOUBLE, assert_close

TOL = awkward.TOLERANCE


def assert_kernel_close(got, ref, dtype, what):
    """Relative error <= TOL, measured against the array's scale: a float32 sum of
    hundreds of O(1) terms that cancels to 0.04 carries ~1e-5 absolute rounding."""
    scale = float(numpy.abs(numpy.asarray(ref)).max()) or 1.0
    assert_close(got, ref, TOL[dtype], TOL[dtype] * scale, what)

needs_compiler = pytest.mark.skipif(cuda_emulator.compiler() is None,
                                    reason="g++ is needed to emulate the kernels on the CPU")


@pytest.fixture
def textbook_oracle():
    """``use_kernels=False`` runs the textbook xp path, not the CPU accelerators."""
    enabled = ops.cpu_accelerators_enabled()
    ops.set_cpu_accelerators_enabled(False)
    yield
    ops.set_cpu_accelerators_enabled(enabled)


@pytest.fixture
def emulated(monkeypatch, gpunet_settings, textbook_oracle):
    """Route kernel launches to the CPU emulation, with poisoned outputs."""
    monkeypatch.setattr(runtime, "launch", cuda_emulator.emulated_launch)
    gpunet_settings(poison=True)


def _cupy_or_skip():
    reason = backend.cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")
    return backend.Device("cuda").xp


class KernelDevice:
    """Where a kernel test runs: ``emulator`` (NumPy arrays, launches compiled as C++
    and run in tests/cuda_emulator) or ``cuda`` (CuPy arrays: a GPU, or the CuPy test
    double). The reference is the textbook xp path on the same arrays."""

    def __init__(self, kind, xp):
        self.kind, self.xp = kind, xp

    def put(self, array):
        return array if self.kind == "emulator" else self.xp.asarray(array)

    @staticmethod
    def get(array):
        return backend.to_numpy(array)

    def skip_layer_sized(self, case, layer_cases):
        if self.kind == "emulator" and case in layer_cases:
            pytest.skip("a layer-sized case: on a GPU only")


@pytest.fixture(params=[pytest.param("emulator", marks=needs_compiler),
                        pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request, monkeypatch, gpunet_settings, textbook_oracle):
    """Each kernel test once on the CPU emulation and once on CUDA (written once)."""
    gpunet_settings(poison=True)
    if request.param == "emulator":
        monkeypatch.setattr(runtime, "launch", cuda_emulator.emulated_launch)
        return KernelDevice("emulator", numpy)
    return KernelDevice("cuda", _cupy_or_skip())


def twice(fn):
    """Run ``fn`` twice; the results must be bitwise equal (determinism)."""
    first, second = fn(), fn()
    for a, b in zip(first, second):
        if a is not None:
            assert numpy.array_equal(a, b, equal_nan=False), "not bitwise reproducible"
    return first


CONV_CASES = [  # N, C, H, W, K, R, S, stride, padding
    (1, 1, 5, 5, 1, 3, 3, (1, 1), 0),
    (2, 3, 7, 6, 4, 3, 3, (2, 2), 1),
    (1, 2, 9, 9, 3, 3, 3, (3, 3), 0),
    (2, 2, 8, 7, 5, 5, 3, (3, 2), (2, 1)),
    (1, 3, 6, 6, 2, 2, 4, (1, 1), "same"),
    (3, 1, 12, 12, 70, 3, 3, (1, 1), 1),   # K > 64: the 128 x 128 tile
    (2, 68, 5, 5, 3, 1, 1, (1, 1), 0),     # C > 64: 128-row tile for dx; weight rows as vectors
    (2, 4, 17, 19, 130, 3, 3, (2, 1), (1, 2)),  # two row tiles, three column tiles, vectors
    (1, 5, 11, 13, 7, 3, 2, (3, 2), (2, 0)),    # stride 3 in dx's gather, uneven padding
]


# Layer-sized cases run on a real GPU; the CuPy double's emulator keeps to small ones.
LAYER_CONV_CASES = [] if CUPY_DOUBLE else [(8, 3, 32, 32, 64, 5, 5, (1, 1), 2),
                                           (4, 64, 27, 27, 192, 5, 5, (1, 1), 2),
                                           (2, 256, 14, 14, 512, 3, 3, (1, 1), 1)]
# The same layers' channels and filters (their reduction lengths) at batch 1, cropped,
# so that CI runs every layer-shaped case through the double before a GPU does.
CROPPED_LAYER_CONV_CASES = [(1, 3, 10, 10, 64, 5, 5, (1, 1), 2),
                            (1, 64, 6, 6, 192, 5, 5, (1, 1), 2),
                            (1, 256, 4, 4, 512, 3, 3, (1, 1), 1)]
LAYER_POOL_CASES = [] if CUPY_DOUBLE else [(64, 64, 55, 55, (3, 3), (2, 2), (0, 0))]
LAYER_BN_SHAPES = [(4, 8, 5, 5)] if CUPY_DOUBLE else [(32, 64, 14, 14)]


def random_conv_cases(count, seed):
    """Seeded random shapes: batch 1-3, windows over the border, strides 1-3, one in
    four with more than 64 filters (the other GEMM tile)."""
    draw = numpy.random.default_rng(seed)
    cases = []
    for i in range(count):
        r, s = (int(v) for v in draw.integers(1, 5, 2))
        h, w = (int(v) for v in draw.integers(max(r, s), 14, 2))
        stride = tuple(int(v) for v in draw.integers(1, 4, 2))
        padding = (int(draw.integers(0, r)), int(draw.integers(0, s)))
        k = int(draw.integers(65, 140)) if i % 4 == 3 else int(draw.integers(1, 10))
        cases.append((int(draw.integers(1, 4)), int(draw.integers(1, 7)), h, w, k, r, s,
                      stride, padding))
    return cases


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CONV_CASES + LAYER_CONV_CASES, ids=str)
def test_conv2d_kernels_match_the_xp_path(device, case, dtype, rng):
    device.skip_layer_sized(case, LAYER_CONV_CASES)
    n, c, h, w, k, r, s, stride, padding = case
    x, weight, bias = (device.put(rng.standard_normal(shape).astype(dtype))
                       for shape in ((n, c, h, w), (k, c, r, s), (k,)))
    y_ref, ctx_ref = ops.conv2d_forward(x, weight, bias, stride, padding, use_kernels=False)
    dy = device.put(rng.standard_normal(y_ref.shape).astype(dtype))
    refs = [device.get(a) for a in (y_ref, *ctx_ref.backward(dy))]

    def run():
        y, ctx = ops.conv2d_forward(x, weight, bias, stride, padding, use_kernels=True)
        assert isinstance(ctx, conv_kernels.ConvContext)
        return tuple(device.get(a) for a in (y, *ctx.backward(dy)))

    for got, ref, name in zip(twice(run), refs, ("y", "dx", "dweight", "dbias")):
        assert_kernel_close(got, ref, dtype, f"{name} ({dtype})")


@needs_compiler
@pytest.mark.parametrize("case", random_conv_cases(8, seed=19), ids=str)
def test_conv2d_kernels_on_random_shapes(emulated, case, rng):
    n, c, h, w, k, r, s, stride, padding = case
    x, weight, bias = (rng.standard_normal(sh) for sh in ((n, c, h, w), (k, c, r, s), (k,)))
    y_ref, ctx_ref = ops.conv2d_forward(x, weight, bias, stride, padding, use_kernels=False)
    dy = rng.standard_normal(y_ref.shape)
    y, ctx = ops.conv2d_forward(x, weight, bias, stride, padding, use_kernels=True)
    for got, ref, name in zip((y, *ctx.backward(dy)),
                              (y_ref, *ctx_ref.backward(dy)),
                              ("y", "dx", "dweight", "dbias")):
        assert_kernel_close(got, ref, "float64", name)


@needs_compiler
def test_conv2d_at_unaligned_addresses(emulated, rng, monkeypatch):
    """A weight and a dy one element into their buffers: the forward reads weights as
    scalar loads whatever their alignment; the `_vec` weight gradient reads dy as
    16-byte vectors, so the launcher hands it an aligned copy (the emulator reads a
    vector element by element: the address launched is checked)."""
    launched = []

    def recording_launch(name, kernel, dtype, grid, block, args, shared_mem=0):
        launched.append((kernel, args))
        cuda_emulator.emulated_launch(name, kernel, dtype, grid, block, args, shared_mem)

    monkeypatch.setattr(runtime, "launch", recording_launch)
    x = rng.standard_normal((5, 32, 3, 3))
    weight = rng.standard_normal(72 * 32 * 2 * 2 + 1)[1:].reshape(72, 32, 2, 2)
    y, ctx = ops.conv2d_forward(x, weight, None, 1, 0, use_kernels=True)
    y_ref, ctx_ref = ops.conv2d_forward(x, weight, None, 1, 0, use_kernels=False)
    assert_kernel_close(y, y_ref, "float64", "y")
    dy = rng.standard_normal(y.size + 1)[1:].reshape(y.shape)
    assert weight.ctypes.data % 16 and dy.ctypes.data % 16 and dy.flags.c_contiguous
    _, dw, _ = ctx.backward(dy)
    _, dw_ref, _ = ctx_ref.backward(dy)
    assert_kernel_close(dw, dw_ref, "float64", "dw")
    vec = [args for kernel, args in launched if kernel == "conv2d_bwd_weight_vec"]
    assert vec and all(runtime.address(args[0]) % 16 == 0 for args in vec)


# The weight-gradient GEMMs, each on shapes its float plan picks it for: dy one element
# a load (OH OW odd) or in vectors (`_vec`: OH OW % 4 == 0); channels a multiple of 4
# or padded to one (their columns' sums in a scratch slice); a step that carries into
# the next row (OW < 8) or several images on (OH OW = 1 or 4); split-K; two row tiles.
WEIGHT_GEMM_CASES = [
    ((2, 30, 5, 7, 100, 3, 3, (1, 1), 1), "conv2d_bwd_weight"),     # C = 30: 2 padded
    ((11, 72, 2, 2, 200, 2, 2, (1, 1), 0), "conv2d_bwd_weight"),    # 8 images a step
    ((3, 30, 15, 15, 120, 3, 3, (1, 1), 1), "conv2d_bwd_weight"),   # 3 slices, + scratch
    ((2, 20, 7, 7, 48, 3, 3, (1, 1), 1), "conv2d_bwd_weight_wide"),
    ((5, 32, 3, 3, 72, 2, 2, (1, 1), 0), "conv2d_bwd_weight_vec"),  # 2 images a step
    ((3, 28, 9, 8, 66, 3, 3, (2, 2), 1), "conv2d_bwd_weight_vec"),
    ((4, 28, 14, 14, 66, 3, 3, (1, 1), 1), "conv2d_bwd_weight_vec"),  # 4 slices
    ((3, 29, 8, 8, 100, 3, 3, (1, 1), 1), "conv2d_bwd_weight_vec"),  # C = 29: 3 padded
    ((1, 24, 6, 6, 40, 3, 3, (1, 1), 0), "conv2d_bwd_weight_wide_vec"),
    ((2, 25, 8, 8, 40, 3, 3, (1, 1), 1), "conv2d_bwd_weight_wide_vec"),  # C = 25
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case,kernel", WEIGHT_GEMM_CASES, ids=str)
def test_conv2d_weight_gemms_match_the_xp_path(device, case, kernel, dtype, rng):
    """Each weight-gradient GEMM, on the shapes its plan picks it for, agrees with the
    xp path, twice bitwise; the emulator launches it."""
    n, c, h, w, k, r, s, stride, padding = case
    x, weight = (device.put(rng.standard_normal(shape).astype(dtype))
                 for shape in ((n, c, h, w), (k, c, r, s)))
    y_ref, ctx_ref = ops.conv2d_forward(x, weight, None, stride, padding, use_kernels=False)
    dy = device.put(rng.standard_normal(y_ref.shape).astype(dtype))
    ref = device.get(ctx_ref.backward(dy)[1])
    _, ctx = ops.conv2d_forward(x, weight, None, stride, padding, use_kernels=True)
    assert _plans(ctx, dtype)[2].kernel == kernel
    cuda_emulator.launches.clear()
    (got,) = twice(lambda: (device.get(ctx.backward(dy)[1]),))
    assert_kernel_close(got, ref, dtype, f"dweight ({dtype})")
    if device.kind == "emulator":
        assert kernel in {name for name, _, _ in cuda_emulator.launches}


@needs_compiler
@pytest.mark.parametrize("case,kernel", WEIGHT_GEMM_CASES, ids=str)
def test_conv2d_weight_gemms_at_tile_k_16(emulated, monkeypatch, case, kernel, rng):
    """bench/gpu_check.py also times the GEMMs built with -DTILE_K=16, where a thread
    of the weight GEMMs loads two runs of channels, two dy vectors or twice the rows."""
    monkeypatch.setattr(cuda_emulator, "compile_options",
                        lambda dtype: (*runtime.compile_options(dtype), "-DTILE_K=16"))
    n, c, h, w, k, r, s, stride, padding = case
    x, weight = rng.standard_normal((n, c, h, w)), rng.standard_normal((k, c, r, s))
    y_ref, ctx_ref = ops.conv2d_forward(x, weight, None, stride, padding, use_kernels=False)
    dy = rng.standard_normal(y_ref.shape)
    cuda_emulator.launches.clear()
    _, ctx = ops.conv2d_forward(x, weight, None, stride, padding, use_kernels=True)
    got = ctx.backward(dy)[1]
    assert kernel in {name for name, _, _ in cuda_emulator.launches}
    assert_kernel_close(got, ctx_ref.backward(dy)[1], "float64", "dweight")


@needs_compiler
def test_weight_gemm_padded_channels_sum_into_a_scratch_slice(emulated, monkeypatch, rng):
    """C = 30: the weight GEMM's columns run over 32 channels a tap, and the 2 padded
    ones' sums land in a slice past the split's, which the launcher allocates (the
    reduce never reads it); C = 32 pads nothing and takes no scratch slice."""
    seen = []

    def record(name, kernel, dtype, grid, block, args, shared_mem=0):
        if kernel.startswith("conv2d_bwd_weight") and not kernel.endswith(("_reduce", "_direct")):
            seen.append((kernel, grid, args[2].shape))
        cuda_emulator.emulated_launch(name, kernel, dtype, grid, block, args, shared_mem)

    monkeypatch.setattr(runtime, "launch", record)
    for c, scratch in ((30, 1), (32, 0)):
        seen.clear()
        x, weight = rng.standard_normal((3, c, 15, 15)), rng.standard_normal((120, c, 3, 3))
        y, ctx = ops.conv2d_forward(x, weight, None, 1, 1, use_kernels=True)
        dy = rng.standard_normal(y.shape)
        _, ctx_ref = ops.conv2d_forward(x, weight, None, 1, 1, use_kernels=False)
        assert_kernel_close(ctx.backward(dy)[1], ctx_ref.backward(dy)[1], "float64", "dweight")
        [(kernel, grid, shape)] = seen
        assert kernel == "conv2d_bwd_weight" and grid[0] == 3 and grid[2] > 1  # 288 columns
        assert shape == (grid[2] + scratch, 120, c * 9)


TF32_CASES = [(2, 3, 9, 9, 70, 3, 3, (1, 1), 1), (2, 5, 11, 10, 6, 3, 2, (2, 1), (1, 0)),
              (1, 66, 6, 6, 9, 1, 1, (1, 1), 0),
              # the weight gradient's tensor-core GEMMs: dy one element a load, in vectors
              (2, 30, 5, 7, 100, 3, 3, (1, 1), 1), (5, 32, 3, 3, 72, 2, 2, (1, 1), 0)]


def check_tf32_convolution(case, rng, to_device=lambda a: a):
    """With TF32 allowed, float32 convolutions run the tensor-core kernels: each
    product rounds A and B to 10 mantissa bits, so every pass stays within 2**-10
    of the float64 result relative to sum |a| |b|, about 3e-4 typically, which
    float32's FMA path (~1e-7) would never show."""
    n, c, h, w, k, r, s, stride, padding = case
    x64, w64 = rng.standard_normal((n, c, h, w)), rng.standard_normal((k, c, r, s))
    b64 = rng.standard_normal(k)
    y64, ctx64 = ops.conv2d_forward(x64, w64, b64, stride, padding, use_kernels=False)
    dy64 = rng.standard_normal(y64.shape)
    refs = (y64, *ctx64.backward(dy64)[:2])
    # the scale of each output: the same sums over |a| |b|
    ya, ctxa = ops.conv2d_forward(numpy.abs(x64), numpy.abs(w64), None, stride, padding,
                                  use_kernels=False)
    scales = (ya, *ctxa.backward(numpy.abs(dy64))[:2])
    f32 = lambda a: to_device(a.astype("float32"))  # noqa: E731

    planned = {}

    def run(tf32):
        runtime.set_allow_tf32(tf32)
        y, ctx = ops.conv2d_forward(f32(x64), f32(w64), f32(b64), stride, padding,
                                    use_kernels=True)
        planned.update(zip(("y", "dx", "dweight"), _plans(ctx, "float32", tf32, y)))
        return (y, *ctx.backward(f32(dy64))[:2])

    try:
        exact, got = run(False), run(True)  # planned: the TF32 run's kernels
    finally:
        runtime.set_allow_tf32(True)
    for name, g, f, ref, scale in zip(("y", "dx", "dweight"), got, exact, refs, scales):
        relative = numpy.abs(backend.to_numpy(g) - ref) / numpy.maximum(scale, 1e-30)
        assert relative.max() <= 2.0**-10, f"{name}: {relative.max():.2e} over 2^-10"
        assert numpy.median(relative) < 5e-4, f"{name}: median {numpy.median(relative):.2e}"
        if planned[name].kernel.endswith("_direct"):
            continue  # few channels or filters: a direct kernel, plain float FMAs
        # Proof that the tensor cores ran: the float kernels' own error on the same
        # inputs is far smaller. Not a floor on TF32's error, which falls with the
        # reduction length relative to sum |a| |b| (a real GPU: 7e-6 at C R S = 2304).
        fp32 = numpy.abs(backend.to_numpy(f) - ref) / numpy.maximum(scale, 1e-30)
        assert numpy.median(relative) > 8 * numpy.median(fp32), \
            f"{name}: TF32 median {numpy.median(relative):.2e}, float {numpy.median(fp32):.2e}"


@pytest.mark.parametrize("case", TF32_CASES + LAYER_CONV_CASES + CROPPED_LAYER_CONV_CASES,
                         ids=str)
def test_conv2d_tf32_kernels(device, gpunet_settings, case, rng):
    """On a GPU, the tensor cores' fragment layouts hold only if a real mma.sync agrees;
    the emulator holds the kernel to the same layouts, as the PTX ISA states them."""
    device.skip_layer_sized(case, LAYER_CONV_CASES)
    if not runtime.tf32_supported(device.xp):
        pytest.skip("no TF32 tensor cores below sm_80: the _tf32 kernels are the float ones")
    gpunet_settings(allow_tf32=True)
    cuda_emulator.launches.clear()
    check_tf32_convolution(case, rng, device.put)
    if device.kind != "emulator":
        return
    launched = {name for name, _, _ in cuda_emulator.launches}
    n, c, h, w, k, r, s, stride, padding = case
    y, ctx = ops.conv2d_forward(numpy.zeros((n, c, h, w), "float32"),
                                numpy.zeros((k, c, r, s), "float32"), None, stride, padding,
                                use_kernels=True)
    planned = {plan.kernel for plan in _plans(ctx, "float32", True, y)}
    assert planned <= launched
    forward = planned & {"conv2d_fwd_tf32", "conv2d_fwd_tf32_split", "conv2d_fwd_direct"}
    assert forward and (k > conv_plan.FWD_DIRECT_MAX_K) == (forward != {"conv2d_fwd_direct"})
    # float64 has no TF32: the same call in float64 runs the exact kernels
    cuda_emulator.launches.clear()
    ops.conv2d_forward(rng.standard_normal((n, c, h, w)), rng.standard_normal((k, c, r, s)),
                       None, stride, padding, use_kernels=True)
    assert not any("_tf32" in name for name, _, _ in cuda_emulator.launches)


def test_fast_divisor_matches_floor_division():
    """The kernels divide by a launch's sizes with a multiply-high and a shift:
    exact for every n below 2**31 (edges around multiples of d, and the top)."""
    draw = numpy.random.default_rng(5)
    divisors = [*range(1, 300), 641, 4096, 65535, 65537, 1 << 20, 3 * 7 * 11 * 13 * 17 * 19,
                2**31 - 1, *(int(v) for v in draw.integers(1, 2**31, 200))]
    for d in divisors:
        magic, shift = runtime.fast_divisor(d)
        assert -2**31 <= magic < 2**31 and 0 <= shift <= 31
        multiples = [d * q for q in (1, 2, 3, (2**31 - 1) // d) if d * q < 2**31]
        numbers = {0, 1, 2**31 - 1, 2**31 - 2, d - 1,
                   *(int(v) for v in draw.integers(0, 2**31, 20))}
        numbers |= {m + e for m in multiples for e in (-1, 0, 1) if 0 <= m + e < 2**31}
        for n in numbers:
            assert runtime.divide(n, magic, shift) == n // d, (n, d)
    with pytest.raises(ValueError, match="divisor must be in"):
        runtime.fast_divisor(0)


@needs_compiler
def test_sizes_beyond_32_bit_indices(emulated, monkeypatch, rng):
    """Asked for explicitly, the kernels refuse arrays of 2**31 elements or more
    with the array named; ``ops`` sends such CuPy arrays down the xp path."""
    monkeypatch.setattr(runtime, "INDEX_LIMIT", 100)
    monkeypatch.setattr(runtime, "INDEX_HEADROOM", 10)  # x of 150 over, (1, 3, 5, 5) under
    x = rng.standard_normal((2, 3, 5, 5))  # 150 elements
    with pytest.raises(ValueError, match=r"conv2d: x has 150 elements; the CUDA kernels take"):
        ops.conv2d_forward(x, rng.standard_normal((2, 3, 3, 3)), None, 1, 0, use_kernels=True)
    with pytest.raises(ValueError, match=r"max_pool2d: x has 150 elements"):
        ops.max_pool2d_forward(x, 2, 2, 0, use_kernels=True)
    with pytest.raises(ValueError, match=r"batch_norm: x has 150 elements"):
        ops.batch_norm_forward(x, numpy.ones(3), numpy.zeros(3), numpy.zeros(3), numpy.ones(3),
                               training=True, use_kernels=True)
    from gpunet.ops import common
    monkeypatch.setattr(common, "uses_kernels", lambda xp: True)
    ops.set_cpu_accelerators_enabled(True)  # the route NumPy arrays take by default
    assert common.route(numpy, None, conv_kernels.fits(x.shape, (2, 3, 3, 3), (3, 3))) == "cpu"
    # (one filter: with 3 channels the weight gradient's scratch slice doubles K C R S)
    assert common.route(numpy, None, conv_kernels.fits((1, 3, 5, 5), (1, 3, 3, 3),
                                                       (3, 3))) == "cuda"


def _last_index(count, step):
    """The largest index a block-strided loop over ``count`` values computes: the
    ``j += blockDim.x`` that ends it (bn_fwd_stats, bn_bwd_reduce, conv2d_bwd_bias)."""
    return count - 1 + step


def test_kernel_indices_stay_below_2_31_with_a_tile_of_headroom():
    """Kernels compute indices past an array's end before their ``< size`` guard (a
    strided loop's last step, a reduction step, a grid rounded up to a tile); in int32,
    one past 2**31 - 1 wraps negative and passes the guard. fits() and the launchers
    leave that much headroom below 2**31."""
    top = 2**31 - 200  # under 2**31, but a strided loop over it steps past 2**31 - 1
    assert _last_index(top, runtime.BLOCK) > 2**31 - 1
    assert not conv_kernels.fits((1, 1, 1, top), (1, 1, 1, 1), (1, top))
    assert not conv_kernels.fits((1, 1, 1, 8), (top // 8, 8, 1, 1), (1, 8))  # CRS columns
    assert not pool_kernels.fits((1, 1, 1, top), (1, top))
    assert not bn_kernels.fits((1, 1, top))
    with pytest.raises(ValueError, match=r"x has 2147483448 elements; the CUDA kernels take "
                                         r"at most 2147482624"):
        runtime.check_indexable("conv2d", x=top)
    # the largest accepted: every index computed still an int32
    most = runtime.index_limit()
    assert conv_kernels.fits((1, 1, 1, most), (1, 1, 1, 1), (1, most))
    assert pool_kernels.fits((1, 1, 1, most), (1, most)) and bn_kernels.fits((1, 1, most))
    assert _last_index(most, runtime.BLOCK * 4) <= 2**31 - 1  # 256 threads of 4 floats


@needs_compiler
def test_conv2d_bias_gradient_over_several_runs(emulated, rng):
    """db[k] sums dy[:, k] in runs of 1024 (the last shorter), then in run order."""
    x, weight, bias = rng.standard_normal((3, 2, 30, 30)), rng.standard_normal((3, 2, 3, 3)), \
        rng.standard_normal(3)
    y, ctx = ops.conv2d_forward(x, weight, bias, 1, 1, use_kernels=True)
    dy = rng.standard_normal(y.shape)
    cuda_emulator.launches.clear()
    dbias = ctx.backward(dy)[2]
    grids = [grid for name, grid, _ in cuda_emulator.launches if name == "conv2d_bwd_bias"]
    assert grids == [(3, 3, 1)]  # 2700 values a filter: runs of 900
    assert_close(dbias, dy.sum(axis=(0, 2, 3)), 1e-12, 1e-12, "dbias")


@needs_compiler
def test_more_channels_than_a_grid_column(emulated, monkeypatch, rng):
    """Batch norm's reductions and the bias gradient run a row of blocks a channel
    (gridDim.y <= 65535): more channels take the xp path, or raise when asked."""
    monkeypatch.setattr(runtime, "MAX_GRID_ROWS", 2)
    x = rng.standard_normal((4, 3, 2, 2))
    assert not bn_kernels.fits(x.shape) and bn_kernels.fits((4, 2, 2, 2))
    with pytest.raises(ValueError, match=r"batch_norm: 3 channels; the CUDA kernels take at most"):
        ops.batch_norm_forward(x, numpy.ones(3), numpy.zeros(3), numpy.zeros(3), numpy.ones(3),
                               training=True, use_kernels=True)
    assert not conv_kernels.fits(x.shape, (3, 3, 1, 1), (2, 2))
    with pytest.raises(ValueError, match=r"conv2d: 3 filters; the CUDA kernels take at most 2"):
        ops.conv2d_forward(x, rng.standard_normal((3, 3, 1, 1)), None, 1, 0, use_kernels=True)


@needs_compiler
def test_conv2d_without_bias_and_split_k(emulated, rng):
    """A long (n, oh, ow) reduction is split over several slices, summed in order."""
    x = rng.standard_normal((4, 1, 20, 20))
    weight = rng.standard_normal((2, 1, 3, 3))
    cuda_emulator.launches.clear()
    y, ctx = ops.conv2d_forward(x, weight, None, 1, 0, use_kernels=True)
    dx, dweight, dbias = ctx.backward(numpy.ones_like(y))
    assert dbias is None
    # the slices: grid.z of the GEMMs, grid.y of the direct kernel (this one)
    splits = [g[1] if kname.endswith("_direct") else g[2] for kname, g, _ in cuda_emulator.launches
              if kname.startswith("conv2d_bwd_weight") and not kname.endswith("_reduce")]
    assert splits and splits[0] > 1
    ref_y, ref_ctx = ops.conv2d_forward(x, weight, None, 1, 0, use_kernels=False)
    assert_close(y, ref_y, 1e-12, 1e-12)
    assert_close(dweight, ref_ctx.backward(numpy.ones_like(y))[1], 1e-12, 1e-12)


POOL_CASES = [  # N, C, H, W, kernel, stride, padding
    (1, 1, 4, 4, (2, 2), (2, 2), (0, 0)),
    (2, 3, 7, 7, (3, 3), (2, 2), (0, 0)),
    (1, 2, 8, 5, (3, 3), (2, 2), (1, 1)),
    (2, 1, 9, 9, (3, 3), (3, 3), (1, 1)),
    (1, 2, 5, 6, (2, 3), (1, 2), (1, 1)),
    (2, 3, 6, 8, (3, 2), (1, 2), (1, 0)),   # window rows read as pairs, rows padded
    (1, 2, 5, 7, (2, 2), (2, 2), (0, 0)),   # W odd: single loads
]


def test_pool_window_rows_as_pairs_only_where_they_are():
    """The forward kernels read a window row as one 2-element vector only for 2-wide,
    stride-2 windows without left padding over an even W, from an aligned x."""
    x = numpy.zeros((1, 1, 4, 8))
    assert pool_kernels._pairs(x, (2, 2), (2, 2), ((0, 0), (0, 0))) == 1
    assert pool_kernels._pairs(x, (3, 2), (1, 2), ((1, 1), (0, 0))) == 1
    assert pool_kernels._pairs(x, (2, 2), (2, 2), ((0, 0), (1, 1))) == 0  # left padding
    assert pool_kernels._pairs(x, (2, 3), (2, 2), ((0, 0), (0, 0))) == 0  # 3 wide
    assert pool_kernels._pairs(x, (2, 2), (2, 1), ((0, 0), (0, 0))) == 0  # stride 1
    assert pool_kernels._pairs(x[..., :7], (2, 2), (2, 2), ((0, 0), (0, 0))) == 0  # W odd
    unaligned = numpy.zeros(33)[1:].reshape(1, 1, 4, 8)
    assert pool_kernels._pairs(unaligned, (2, 2), (2, 2), ((0, 0), (0, 0))) == 0


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES + LAYER_POOL_CASES, ids=str)
def test_pool_kernels_match_the_xp_path(device, kind, case, rng):
    device.skip_layer_sized(case, LAYER_POOL_CASES)
    n, c, h, w, kernel, stride, pad = case
    x = rng.standard_normal((n, c, h, w))
    x[0, 0, :2, :2] = 1.5  # a tie: the first maximum must win on both paths
    x = device.put(x)
    fwd = {"max": ops.max_pool2d_forward, "avg": ops.avg_pool2d_forward}[kind]
    y_ref, ctx_ref = fwd(x, kernel, stride, pad, use_kernels=False)
    dy = device.put(rng.standard_normal(y_ref.shape))

    def run():
        y, ctx = fwd(x, kernel, stride, pad, use_kernels=True)
        assert isinstance(ctx, pool_kernels.PoolKernelContext)
        return device.get(y), device.get(ctx.backward(dy)[0])

    y, dx = twice(run)
    assert_close(y, device.get(y_ref), 1e-12, 1e-12, "y")
    assert_close(dx, device.get(ctx_ref.backward(dy)[0]), 1e-12, 1e-12, "dx")


POOL_OPTION_CASES = [  # N, C, H, W, kernel, stride, padding: windows over the border
    (1, 1, 5, 5, (2, 2), (2, 2), (1, 1)),   # ceil's last window would start in the padding
    (1, 2, 6, 6, (3, 3), (2, 2), (1, 1)),   # ceil's last window overhangs the padding
    (2, 1, 8, 7, (3, 3), (3, 3), (1, 1)),   # stride 3, overhang on the right only
    (1, 2, 5, 6, (2, 3), (1, 2), (1, 1)),   # stride 1 rows, rectangular
    (2, 3, 7, 8, (3, 2), (2, 2), (1, 0)),   # window rows read as pairs, W even
    (1, 1, 7, 5, (2, 2), (3, 3), (0, 0)),   # stride > kernel, W odd
]


@pytest.mark.parametrize("kind, ceil_mode, count_include_pad", [
    ("max", True, True), ("avg", True, True), ("avg", True, False), ("avg", False, False)],
    ids=["max-ceil", "avg-ceil", "avg-ceil-exclude-pad", "avg-exclude-pad"])
@pytest.mark.parametrize("case", POOL_OPTION_CASES, ids=str)
def test_pool_kernel_options_match_the_xp_path(device, kind, ceil_mode, count_include_pad,
                                               case, rng):
    """ceil_mode and count_include_pad: the kernels' output sizes and per-window
    divisors (window_count) against the textbook path, float64 and float32."""
    kwargs = {"ceil_mode": ceil_mode}
    if kind == "avg":
        kwargs["count_include_pad"] = count_include_pad
    n, c, h, w, kernel, stride, pad = case
    fwd = {"max": ops.max_pool2d_forward, "avg": ops.avg_pool2d_forward}[kind]
    for dtype in ("float64", "float32"):
        x = device.put(rng.standard_normal((n, c, h, w)).astype(dtype))
        y_ref, ctx_ref = fwd(x, kernel, stride, pad, use_kernels=False, **kwargs)
        dy = device.put(rng.standard_normal(y_ref.shape).astype(dtype))

        def run(x=x, dy=dy):
            y, ctx = fwd(x, kernel, stride, pad, use_kernels=True, **kwargs)
            assert isinstance(ctx, pool_kernels.PoolKernelContext)
            return device.get(y), device.get(ctx.backward(dy)[0])

        y, dx = twice(run)
        assert y.dtype == dx.dtype == numpy.dtype(dtype)
        assert_kernel_close(y, device.get(y_ref), dtype, f"y ({dtype})")
        assert_kernel_close(dx, device.get(ctx_ref.backward(dy)[0]), dtype, f"dx ({dtype})")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (3, 2, 4, 5), (1, 2, 3, 3)]
                         + LAYER_BN_SHAPES, ids=str)
def test_batch_norm_kernels_match_the_xp_path(device, shape, training, rng):
    device.skip_layer_sized(shape, LAYER_BN_SHAPES)
    if training and numpy.prod(shape) // shape[1] < 2:
        pytest.skip("one value per channel")
    c = shape[1]
    x, dy = device.put(rng.standard_normal(shape) * 3 + 2), device.put(rng.standard_normal(shape))
    gamma, beta = device.put(rng.standard_normal(c)), device.put(rng.standard_normal(c))

    def run(use_kernels):
        mean, var = device.put(numpy.linspace(-1, 1, c)), device.put(numpy.linspace(0.5, 2, c))
        y, ctx = ops.batch_norm_forward(x, gamma, beta, mean, var, training=training,
                                        use_kernels=use_kernels)
        return tuple(device.get(a) for a in (y, mean, var, *ctx.backward(dy)))

    got = twice(lambda: run(True))
    for a, b, name in zip(got, run(False), ("y", "running_mean", "running_var", "dx",
                                            "dgamma", "dbeta")):
        assert_close(a, b, 1e-11, 1e-12, name)


@needs_compiler
@pytest.mark.parametrize("min_run", [1024, 7])
@pytest.mark.parametrize("shape", [(8, 3, 16, 16), (16, 2, 20, 20), (50, 5)])
def test_batch_norm_statistics_over_many_runs(emulated, monkeypatch, shape, min_run, rng):
    """Each channel's values in several runs (the last shorter), merged in order:
    the same statistics and gradients as one pass over the channel."""
    monkeypatch.setattr(bn_kernels, "MIN_RUN", min_run)
    m = numpy.prod(shape) // shape[1]
    parts, chunk = bn_kernels.runs(m, shape[1])
    assert parts == min(-(-512 // shape[1]), -(-m // min_run)) and (parts - 1) * chunk < m
    x = rng.standard_normal(shape) * 3 + 2
    mean, var, pivot, offset, _ = bn_kernels.stats(x)
    assert_close(pivot + offset, mean, 1e-15, 0, "pivot + offset")
    axes = (0, *range(2, x.ndim))
    assert_close(mean, x.mean(axis=axes), 1e-12, 1e-12, "mean")
    assert_close(var, x.var(axis=axes), 1e-12, 1e-12, "var")
    dy = rng.standard_normal(shape)
    c = shape[1]
    for use_kernels in (True, False):
        y, ctx = ops.batch_norm_forward(x, numpy.full(c, 1.5), numpy.zeros(c), numpy.zeros(c),
                                        numpy.ones(c), training=True, use_kernels=use_kernels)
        grads = ctx.backward(dy)
        if use_kernels:
            got = (y, *grads)
    for a, b, name in zip(got, (y, *grads), ("y", "dx", "dgamma", "dbeta")):
        assert_close(a, b, 1e-11, 1e-12, name)


@needs_compiler
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_elementwise_kernels_move_vectors_where_aligned(emulated, dtype, rng):
    """bn_fwd_apply and bn_bwd_dx move 16 bytes a thread when HW is a multiple of the
    vector and every array is aligned; a view one element into its buffer, or an HW
    the vector does not divide, takes the scalar path. Both give the xp path's values."""
    width = 16 // numpy.dtype(dtype).itemsize
    # (HW, x's offset in its buffer, vectors in bn_fwd_apply, in bn_bwd_dx: its dy,
    # x_hat and dx are aligned whatever x is)
    for hw, offset, *vectors in ((256, 0, True, True), (256, 1, False, True),
                                 (255, 0, False, False)):
        shape = (3, 2, hw)
        buffer = rng.standard_normal(numpy.prod(shape) + 1).astype(dtype)
        x = buffer[offset:offset + numpy.prod(shape)].reshape(shape)
        dy = rng.standard_normal(shape).astype(dtype)
        cuda_emulator.launches.clear()
        c = shape[1]
        outputs = []
        for use_kernels in (True, False):
            gamma, beta = numpy.full(c, 1.5, dtype), numpy.full(c, 0.25, dtype)
            y, ctx = ops.batch_norm_forward(x, gamma, beta, numpy.zeros(c), numpy.ones(c),
                                            training=True, use_kernels=use_kernels)
            outputs.append((y, *ctx.backward(dy)))
        grids = {name: grid[0] for name, grid, _ in cuda_emulator.launches}
        for kernel, vector in zip(("bn_fwd_apply", "bn_bwd_dx"), vectors):
            count = -(-x.size // width) if vector else x.size
            assert grids[kernel] == -(-count // runtime.BLOCK), (kernel, hw, offset)
        for a, b, name in zip(*outputs, ("y", "dx", "dgamma", "dbeta")):
            assert_kernel_close(a, b, dtype, f"{name} (hw {hw}, offset {offset})")


def test_batch_norm_merge_weights():
    """Chan et al.'s weights for runs of 4, 4, 2 values."""
    w = bn_kernels.merge_weights(10, 3, 4).reshape(3, 3)
    numpy.testing.assert_allclose(w, [[1 / 4, 1, 0], [1 / 4, 4 / 8, 4 * 4 / 8],
                                      [1 / 2, 2 / 10, 8 * 2 / 10]])


@needs_compiler
def test_batch_norm_kernel_large_mean_small_spread(emulated, rng):
    """The kernel's pivot-shifted float32 sums keep mean 1e4, std 1e-2 accurate,
    within each run and across the four runs merged."""
    x = (1e4 + 1e-2 * rng.standard_normal((64, 2, 8, 8))).astype("float32")
    assert bn_kernels.runs(64 * 8 * 8, 2)[0] == 4
    mean, var, pivot, offset, _ = bn_kernels.stats(x)
    # the mean is stored in float32: within one ulp of 1e4 (~1e-3)
    assert_close(mean, x.astype("float64").mean(axis=(0, 2, 3)), 0, 1e-3)
    assert_close(var, x.astype("float64").var(axis=(0, 2, 3)), 1e-3, 0)
    # x is centred by pivot and offset, which keep what the rounded mean loses
    y, x_hat = bn_kernels.apply(x, pivot, offset, 1 / numpy.sqrt(var), numpy.ones(2, x.dtype),
                                numpy.zeros(2, x.dtype))
    exact = x.astype("float64")
    exact = (exact - exact.mean(axis=(0, 2, 3), keepdims=True)) / exact.std(axis=(0, 2, 3),
                                                                           keepdims=True)
    assert_close(x_hat, exact, 1e-3, 1e-3, "x_hat")


@pytest.fixture
def device_work(monkeypatch, gpunet_settings):
    """The work each CuPy call would put on a GPU, in order, as ``(kind, name)``:
    ``("launch", kernel)`` for a RawKernel launch, ``("op", name)`` for a CuPy
    operation that computes or copies (elementwise, reduction, astype, fill, an
    in-place operator); allocation (``empty``) and views (a reshape, ascontiguousarray
    of a contiguous array) are free. The CuPy test double only: its arrays hold NumPy
    ones, and each of its operations passes through ``_core.compute`` or an ndarray
    method patched here. Outputs are not poisoned (a poisoning fill would count)."""
    xp = _cupy_or_skip()
    if not getattr(xp, "IS_TEST_DOUBLE", False):
        pytest.skip("counts the CuPy test double's operations")
    from cupy import _core, _raw  # the double's modules
    gpunet_settings(poison=False)
    work = []
    compute, call = _core.compute, _raw.RawKernel.__call__

    def counted_compute(function, *args, **kwargs):
        result = compute(function, *args, **kwargs)
        name = getattr(function, "__name__", repr(function))
        inputs = [a for a in args if isinstance(a, numpy.ndarray)]
        produced = result._a if isinstance(result, _core.ndarray) else None
        view = produced is not None and any(numpy.may_share_memory(produced, a) for a in inputs)
        if name not in ("empty", "empty_like") and ("out" in kwargs or not view):
            work.append(("op", name))
        return result

    def counted_launch(kernel, *args, **kwargs):
        work.append(("launch", kernel.name))
        return call(kernel, *args, **kwargs)

    def counted(name, method):
        def wrapper(self, *args, **kwargs):
            work.append(("op", name))
            return method(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(_core, "compute", counted_compute)
    monkeypatch.setattr(_raw.RawKernel, "__call__", counted_launch)
    for name in [n for n in vars(_core.ndarray) if n.startswith("__i") and n != "__init__"] \
            + ["__neg__", "__abs__", "__setitem__", "astype", "copy", "fill"]:
        if name in vars(_core.ndarray):
            monkeypatch.setattr(_core.ndarray, name, counted(name, vars(_core.ndarray)[name]))
    return xp, work


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 9), (5, 4), (3, 1, 1, 1)], ids=str)
def test_batch_norm_training_is_three_launches_each_way(device_work, shape, rng):
    """Forward in training: bn_fwd_stats, bn_fwd_stats_combine (which also writes
    inv_std and updates the running statistics in place) and bn_fwd_apply, and no
    CuPy operation besides; backward: at most three launches, nothing else. The
    instrument counts: the same forward with float64 running statistics for float32
    x (which the kernel cannot update in place) shows the CuPy operations."""
    xp, work = device_work
    c = shape[1]
    x = xp.asarray((rng.standard_normal(shape) * 2 + 5).astype("float32"))
    dy = xp.asarray(rng.standard_normal(shape).astype("float32"))
    gamma, beta = (xp.asarray(rng.standard_normal(c).astype("float32")) for _ in range(2))

    def forward(dtype="float32"):
        mean, var = xp.zeros(c, dtype), xp.ones(c, dtype)
        work.clear()
        y, ctx = ops.batch_norm_forward(x, gamma, beta, mean, var, training=True,
                                        use_kernels=True)
        return list(work), ctx

    forward()  # first call: the per-shape tables are copied to the device once
    launched, ctx = forward()
    assert launched == [("launch", "bn_fwd_stats"), ("launch", "bn_fwd_stats_combine"),
                        ("launch", "bn_fwd_apply")]
    work.clear()
    ctx.backward(dy)
    assert len(work) <= 3 and all(kind == "launch" for kind, _ in work), work
    launched, _ = forward("float64")
    assert sum(kind == "op" for kind, _ in launched) >= 8, launched


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 1, 1, 1), (1, 3, 5, 7), (3, 5, 3, 3),
                                   (7, 3), (4, 2, 257)], ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_training_with_running_statistics_in_the_kernel(device, shape, dtype, rng):
    """The combine kernel's inv_std and in-place running statistics against the xp
    path, on awkward shapes and a large mean (1e4 with a spread of 1e-2 in float32):
    y, the running statistics and the gradients, bitwise the same run to run."""
    c = shape[1]
    raw = 1e4 + 1e-2 * rng.standard_normal(shape) if dtype == "float32" else \
        rng.standard_normal(shape) * 3 + 2
    x, dy = device.put(raw.astype(dtype)), device.put(rng.standard_normal(shape).astype(dtype))
    gamma = device.put(rng.standard_normal(c).astype(dtype))
    beta = device.put(rng.standard_normal(c).astype(dtype))

    def run(use_kernels):
        mean = device.put(numpy.linspace(-1, 1, c).astype(dtype))
        var = device.put(numpy.linspace(0.5, 2, c).astype(dtype))
        y, ctx = ops.batch_norm_forward(x, gamma, beta, mean, var, training=True,
                                        momentum=0.3, use_kernels=use_kernels)
        return tuple(device.get(a) for a in (y, mean, var, *ctx.backward(dy)))

    got = twice(lambda: run(True))
    axes = (0, *range(2, len(shape)))
    # dx's scale is gamma dy inv_std, even where its terms cancel (two values a channel)
    dx_scale = float(numpy.abs(device.get(gamma)).max() * numpy.abs(device.get(dy)).max()
                     / numpy.sqrt(raw.var(axis=axes).min() + 1e-5))
    # float32: x_hat of a 1e-2 spread around 1e4 keeps float32's 1e-3 of it
    tol = 2e-3 if dtype == "float32" else TOL[dtype]
    for a, b, name in zip(got, run(False), ("y", "running_mean", "running_var", "dx",
                                            "dgamma", "dbeta")):
        scale = max(float(numpy.abs(b).max()), dx_scale if name == "dx" else 0.0)
        assert_close(a, b, tol, tol * scale, name)


@needs_compiler
@pytest.mark.parametrize("family", ["conv2d", "max_pool2d", "avg_pool2d", "batch_norm"])
def test_kernels_alternating_float32_float64_in_one_process(emulated, family):
    """float32, float64, float32 launches of each kernel in one process: the two
    builds' __shared__ arrays must stay apart (g++'s STB_GNU_UNIQUE binding merged
    them across libraries, so float64 ran on the float build's smaller buffers).
    On the family's awkward case, the one the GPU check's smoke stage launches."""
    for seed, dtype in enumerate(("float32", "float64", "float32", "float64")):
        bound = awkward.tolerance(dtype, awkward.longest_sum(family))
        for got, ref in zip(awkward.family_outputs(family, dtype, True, numpy.asarray, seed),
                            awkward.family_outputs(family, dtype, False, numpy.asarray, seed)):
            scale = max(float(numpy.abs(ref).max()), 1.0)
            assert_close(got, ref, 0, bound * scale, f"{family} ({dtype} after other dtypes)")


# -- on a GPU only ------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "xp-path"])
def test_lenet5_training_on_gpu_follows_the_cpu_run(kernels, gpunet_settings):
    """20 steps of LeNet-5 (with batch norm) on the device, through the kernels or
    the xp path (GPUNET_KERNELS=0), give the CPU run's float32 losses to 1e-5."""
    _cupy_or_skip()
    import gpunet
    from gpunet import losses, models, optim

    gpunet_settings(kernels=kernels)
    batch = 8 if CUPY_DOUBLE else 32
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype("float32")
    y = rng.integers(0, 10, batch)
    curves = []
    for device in ("cpu", "cuda"):
        gpunet.set_device("cpu")
        gpunet.manual_seed(0)
        model = models.lenet5(batch_norm=True).to(device)
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss = losses.SoftmaxCrossEntropy()
        xb, yb = gpunet.to_device(x, device), gpunet.to_device(y, device)
        curve = []
        for _ in range(20):
            opt.zero_grad()
            curve.append(loss(model(xb), yb))
            model.backward(loss.backward())
            opt.step()
        curves.append(curve)
    gpunet.set_device("cpu")
    assert_close(curves[1], curves[0], 1e-5, 1e-5, "losses on the device vs the CPU")


@pytest.mark.gpu
def test_float64_gradcheck_through_the_kernels():
    _cupy_or_skip()
    import gpunet
    from gpunet import losses, nn

    gpunet.set_device("cuda")
    try:
        model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Conv2d(3, 2, 2, stride=2), nn.AvgPool2d(1),
                              nn.Flatten(), nn.Linear(8, 3))
        rng = numpy.random.default_rng(1)
        x = gpunet.to_device(rng.standard_normal((3, 2, 8, 8)), "cuda")
        y = gpunet.to_device(numpy.array([0, 2, 1]), "cuda")
        report = gpunet.gradcheck(model, losses.SoftmaxCrossEntropy(), x, y, eps=1e-6)
        assert report.passed, str(report)
    finally:
        gpunet.set_device("cpu")


@pytest.mark.gpu
def test_gpu_out_of_memory_is_a_clear_error_and_the_process_continues():
    _cupy_or_skip()
    import gpunet
    from gpunet import losses, nn, optim

    gpunet.set_device("cuda")
    try:
        model = nn.Sequential(nn.Conv2d(3, 512, 3, padding=1), nn.Flatten(), nn.Linear(1, 1))
        opt = optim.SGD(model.parameters(), 0.1)
        x = numpy.zeros((64, 3, 1024, 1024), "float32")  # the conv output alone is 137 GB
        with pytest.raises(MemoryError, match="step 1: the GPU ran out of memory .*smaller"):
            gpunet.fit(model, losses.MSELoss(), opt, (x, numpy.zeros((64, 1), "float32")), 1,
                       64, progress=False)
        small = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 64, 1))
        gpunet.fit(small, losses.MSELoss(), optim.SGD(small.parameters(), 0.1),
                   (numpy.zeros((8, 3, 8, 8), "float32"), numpy.zeros((8, 1), "float32")), 1, 4,
                   progress=False)
    finally:
        gpunet.set_device("cpu")


# Awkward shapes for the paths chosen by shape (gpunet.cuda.conv2d_plan): few channels
# at strides 2-4 (dx in phases, some with no tap: R < stride), padding over the border,
# odd sizes, C = 1 and 3, K = 6; N K OH OW small against the SMs (split-K) and not.
PLAN_CASES = [  # N, C, H, W, K, R, S, stride, padding
    (2, 3, 23, 21, 6, 7, 7, (4, 4), 2),     # AlexNet's conv1 in small: 11 x 11 at 4 -> 7 x 7
    (1, 1, 13, 11, 6, 2, 3, (3, 4), (1, 2)),  # R < stride: phases no tap reaches (dx = 0)
    (3, 1, 9, 10, 6, 5, 5, (1, 1), 2),      # stride 1: one phase, borders clipped
    (2, 16, 7, 9, 5, 3, 3, (2, 3), 1),      # the most channels the direct kernel takes
    (1, 17, 6, 5, 3, 3, 3, (2, 2), 1),      # one more: the GEMM
    (2, 3, 5, 5, 6, 5, 5, (2, 2), 4),       # padding wider than the input
    # the forward: at most 16 filters direct (K = 1, 16, odd sizes, strides 1-4,
    # padding over the border), 17 the GEMM; reductions of (c, r, s) or (k, r, s)
    # longer than 256 on a grid under a wave (what a forward split-K would split)
    (3, 1, 11, 9, 1, 3, 4, (1, 2), (2, 1)),   # C = 1, K = 1
    (2, 3, 13, 15, 16, 5, 3, (3, 4), 2),     # K = 16, the most the direct forward takes
    (1, 5, 9, 7, 17, 3, 3, (2, 1), 1),       # K = 17: the GEMM
    (2, 41, 7, 6, 20, 3, 3, (1, 1), 1),      # C R S = 369, K R S = 180
    (1, 19, 5, 7, 73, 2, 3, (2, 2), 1),      # C R S = 114, K R S = 438
    (1, 30, 6, 5, 70, 3, 4, (1, 3), (2, 1)),  # the 128 x 128 tile
    # the phased backward-data GEMM on the 128-row tile (C > 64), strides 2-4, K = 6,
    # N = 1, split-K over a phase's taps; the 128 x 128 forward split at strides 3, 2
    (1, 70, 7, 9, 40, 5, 5, (2, 2), 2),      # phase taps 3 x 3 down to 2 x 2: split
    (1, 66, 9, 8, 6, 4, 4, (4, 3), 1),       # phases with 1 x 1 up to 1 x 2 taps
    (1, 33, 9, 11, 70, 3, 3, (3, 2), 1),     # C R S = 297: the forward in two slices
    (2, 20, 5, 4, 9, 5, 3, (1, 1), (3, 1)),  # stride 1: one phase, padding past the input
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", PLAN_CASES, ids=str)
def test_conv2d_planned_paths_match_the_xp_path(device, case, dtype, rng):
    """Every pass on the path its plan picks agrees with the textbook xp path, twice
    bitwise (deterministic), and (emulator) launches exactly the plan's kernels and
    grids."""
    n, c, h, w, k, r, s, stride, padding = case
    x, weight, bias = (device.put(rng.standard_normal(sh).astype(dtype))
                       for sh in ((n, c, h, w), (k, c, r, s), (k,)))
    y_ref, ctx_ref = ops.conv2d_forward(x, weight, bias, stride, padding, use_kernels=False)
    dy = device.put(rng.standard_normal(y_ref.shape).astype(dtype))
    refs = [device.get(a) for a in (y_ref, *ctx_ref.backward(dy))]

    def run():
        y, ctx = ops.conv2d_forward(x, weight, bias, stride, padding, use_kernels=True)
        return tuple(device.get(a) for a in (y, *ctx.backward(dy)))

    cuda_emulator.launches.clear()
    for got, ref, name in zip(twice(run), refs, ("y", "dx", "dweight", "dbias")):
        assert_kernel_close(got, ref, dtype, f"{name} ({dtype})")
    if device.kind != "emulator":
        return
    _, ctx = ops.conv2d_forward(x, weight, bias, stride, padding, use_kernels=True)
    launched = [(name, grid) for name, grid, _ in cuda_emulator.launches]
    for plan in _plans(ctx, dtype):
        assert (plan.kernel, plan.grid) in launched, f"{plan} not launched: {launched}"
        assert plan.issued >= plan.useful


def test_conv2d_filters_up_to_the_window_bits_run_the_gemms(device, rng):
    """A filter of WINDOW_EXTENT rows runs the GEMMs, whose tap tables give each row one
    bit (the forward's and the backward data's: C and K over the direct kernels' 16),
    and agrees with the textbook path; one row more (dilated too) is refused with
    the reason (fits() sends it down the xp path)."""
    dtype, rows = "float64", conv_kernels.WINDOW_EXTENT
    x, weight, bias = (device.put(rng.standard_normal(sh).astype(dtype))
                       for sh in ((1, 17, rows + 2, 4), (20, 17, rows, 3), (20,)))
    y_ref, ctx_ref = ops.conv2d_forward(x, weight, bias, 1, 1, use_kernels=False)
    dy = device.put(rng.standard_normal(y_ref.shape).astype(dtype))
    refs = [device.get(a) for a in (y_ref, *ctx_ref.backward(dy))]
    cuda_emulator.launches.clear()
    y, ctx = ops.conv2d_forward(x, weight, bias, 1, 1, use_kernels=True)
    for got, ref, name in zip((y, *ctx.backward(dy)), refs, ("y", "dx", "dweight", "dbias")):
        assert_kernel_close(device.get(got), ref, dtype, name)
    if device.kind == "emulator":
        launched = {name for name, _, _ in cuda_emulator.launches}
        for gemm in (r"conv2d_fwd(_wide)?(_split)?", r"conv2d_bwd_data(_wide)?"):
            assert any(re.fullmatch(gemm, name) for name in launched), (gemm, launched)
    longer = device.put(rng.standard_normal((20, 17, rows + 1, 3)).astype(dtype))
    with pytest.raises(ValueError, match=f"spans {rows + 1} x 3; the CUDA kernels take at "
                                         f"most {rows} rows"):
        ops.conv2d_forward(x, longer, bias, 1, 2, use_kernels=True)
    with pytest.raises(ValueError, match="spans 5 x 33"):
        ops.conv2d_forward(x, weight[:, :, :3], bias, 1, 16, dilation=(2, 16), use_kernels=True)


def _plans(ctx, dtype, tf32=False, like=None):
    """The three passes' plans for a ConvContext, as the launchers make them on the
    device of ``like``."""
    xp = numpy if like is None else backend.get_array_module(like)
    tf32 = tf32 and runtime.tf32_supported(xp)
    sms = runtime.sm_count(xp)
    return [conv_plan.forward_plan(ctx.sizes, ctx.stride, ctx.pads, dtype, tf32, sms),
            conv_plan.data_plan(ctx.sizes, ctx.stride, ctx.pads, dtype, tf32, sms),
            conv_plan.weight_plan(ctx.sizes, ctx.stride, ctx.pads, dtype, tf32, sms)]


def test_direct_data_plan_counts_only_the_taps_that_reach():
    """At stride 4 a 7 x 7 filter reaches each dx with 2 x 2 or 1 x 2 ... taps, never
    the 49 a GEMM over all taps issues; the phases cover dx exactly once."""
    sizes = (2, 3, 23, 21, 6, 7, 7, 6, 5)
    plan = conv_plan.data_plan(sizes, (4, 4), ((2, 2), (2, 2)), "float32", False, 132)
    assert plan.kernel == "conv2d_bwd_data_direct" and plan.grid[2] == 16
    rows = conv_plan._phases(23, 2, 4, 7)
    assert sum(q for q, _ in rows) == 23 and sum(t for _, t in rows) == 7
    assert plan.overwork < 2


def test_benchmark_plans_issue_at_most_twice_the_useful_work():
    """bench/gpu_plan.py's table (no GPU): every conv case of LAYER_CASES has its
    three passes, each issues at most 2x the useful multiply-adds on 132 SMs."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
    import gpu_plan
    table = gpu_plan.rows()
    from gpunet.benchmarks import LAYER_CASES
    assert len(table) == 3 * sum(case.op == "conv" for case in LAYER_CASES)
    for case, name, plan in table:
        assert plan.issued >= plan.useful > 0, (case, name, plan)
        assert plan.overwork <= 2, (case, name, plan)


def test_benchmark_plans_fill_three_quarters_of_their_waves():
    """Every pass of every conv case of LAYER_CASES on an H100 SXM (132 SMs) fills at
    least 3/4 of its launched waves, a grid under one wave counted by its share of
    one (conv2d_plan.fill_score): forward and backward-data GEMMs split their
    reduction where their tiles alone would not, the direct backward data its sum
    over the filters."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
    import gpu_plan
    for case, name, plan in gpu_plan.rows(sms=132):
        assert conv_plan.fill_score(plan.waves) >= conv_plan.GOOD_FILL, (case, name, plan)


# (N, C, H, W, K, R, S, stride, padding, dilation, groups): per group few filters and
# channels (the direct forward and data kernels on the spread filter), more than 16
# of both (the GEMMs with dilated tap tables), and a dilation along one axis only.
GROUPED_DILATED_CASES = [
    (2, 4, 9, 8, 6, 3, 2, (1, 2), (2, 1), (2, 3), 2),
    (1, 36, 7, 6, 34, 3, 3, (1, 1), 2, (2, 2), 2),
    (2, 18, 8, 9, 20, 2, 3, (2, 1), (1, 2), (3, 1), 1),
    (1, 6, 7, 7, 6, 3, 3, (2, 2), 1, (1, 1), 6),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", GROUPED_DILATED_CASES, ids=str)
def test_grouped_dilated_conv2d_kernels_match_the_xp_path(device, case, dtype, rng):
    """Groups and dilation through the kernels (emulated, and behind the double)
    against the xp path: a ConvContext per group, each pass launched, the GEMMs with
    their dilated tap tables where the plan picks them."""
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    x, weight, bias = (device.put(rng.standard_normal(shape).astype(dtype))
                       for shape in ((n, c, h, w), (k, c // groups, r, s), (k,)))
    kwargs = {"dilation": dilation, "groups": groups}
    y_ref, ctx_ref = ops.conv2d_forward(x, weight, bias, stride, padding, use_kernels=False,
                                        **kwargs)
    dy = device.put(rng.standard_normal(y_ref.shape).astype(dtype))
    refs = [device.get(a) for a in (y_ref, *ctx_ref.backward(dy))]
    allowed = runtime.allow_tf32()
    runtime.set_allow_tf32(False)
    try:
        def run():
            y, ctx = ops.conv2d_forward(x, weight, bias, stride, padding, use_kernels=True,
                                        **kwargs)
            parts = ctx.contexts if groups > 1 else [ctx]
            assert all(isinstance(p, conv_kernels.ConvContext) for p in parts)
            return tuple(device.get(a) for a in (y, *ctx.backward(dy)))
        got = twice(run)
    finally:
        runtime.set_allow_tf32(allowed)
    for g, ref, name in zip(got, refs, ("y", "dx", "dweight", "dbias")):
        assert_kernel_close(g, ref, dtype, f"{name} ({dtype})")


def test_dilated_plans_use_tap_tables_and_count_zero_taps_as_waste():
    """Dilated: the forward and data GEMMs keep the real R S reduction (taps from the
    table, nothing wasted on zeros); the direct kernels and the weight pass run the
    spread filter, their zero taps issued but not useful."""
    sizes = (2, 32, 12, 12, 32, 3, 3, 8, 8)  # 3x3 dilated by 2: spans 5x5, pad 0 -> 8x8
    real = conv_plan.useful_macs(sizes, dilation=(2, 2))
    assert real == 2 * 32 * 32 * 9 * 64  # every tap inside x: no padding
    # one SM: the one block fills its wave, no split-K to compare
    forward = conv_plan.forward_plan(sizes, (1, 1), ((0, 0), (0, 0)), "float64", False, 1,
                                     (2, 2))
    assert forward.kernel == "conv2d_fwd_wide" and forward.useful == real
    spread = conv_plan.forward_plan(conv_plan.spread_sizes(sizes, (2, 2)), (1, 1),
                                    ((0, 0), (0, 0)), "float64", False, 1)
    assert forward.issued * 25 == spread.issued * 9  # C R S = 288 terms, not C 5 5 = 800
    few = conv_plan.forward_plan((2, 32, 12, 12, 4, 3, 3, 8, 8), (1, 1), ((0, 0), (0, 0)),
                                 "float64", False, 100, (2, 2))
    assert few.kernel == "conv2d_fwd_direct" and few.overwork > 25 / 9 * 0.99
    weight = conv_plan.weight_plan(sizes, (1, 1), ((0, 0), (0, 0)), "float64", False, 100,
                                   (2, 2))
    assert weight.useful == real and weight.overwork >= 25 / 9 * 0.99


@needs_compiler
def test_a_repeated_conv2d_launch_looks_its_plans_up(emulated, monkeypatch, rng):
    """The second forward and backward of a shape compute no plan and no geometry (the
    caches answer), and the caches stay within their bound however many shapes pass."""
    caches = (conv_plan.forward_plan, conv_plan.data_plan, conv_plan.weight_plan,
              conv_kernels._geometry_values, conv_kernels._bias_runs)
    x, weight = rng.standard_normal((2, 20, 7, 6)), rng.standard_normal((24, 20, 3, 3))
    bias = rng.standard_normal(24)

    def step():
        y, ctx = ops.conv2d_forward(x, weight, bias, (2, 1), 1, use_kernels=True)
        ctx.backward(numpy.ones_like(y))

    step()
    misses = [cache.cache_info().misses for cache in caches]
    step()
    assert [cache.cache_info().misses for cache in caches] == misses
    for cache in caches:
        assert cache.cache_info().maxsize == conv_plan.PLAN_CACHE_SIZE
    # a stream of shapes: the plan caches hold at most their bound
    bound = conv_plan.PLAN_CACHE_SIZE
    for n in range(1, bound + 40):
        conv_plan.forward_plan((n, 20, 7, 6, 24, 3, 3, 4, 6), (2, 1), ((1, 1), (1, 1)),
                               "float64", False, 132)
    assert conv_plan.forward_plan.cache_info().currsize == bound


@pytest.mark.parametrize("stride, pads, dilation", [
    ((2, 3), ((1, 1), (2, 0)), (1, 1)), ((4, 4), ((2, 2), (2, 2)), (1, 1)),
    ((1, 1), ((1, 1), (0, 2)), (1, 1)), ((2, 1), ((1, 1), (2, 2)), (3, 2))], ids=str)
def test_data_phase_table_pairs_each_dx_with_exactly_its_taps(stride, pads, dilation):
    """conv2d_bwd_data's table (no GPU): read as the kernel reads it, its phases cover
    every dx position once, and each position meets exactly the (k, r, s, oh, ow) of
    the forward that touch it (oh sh - pt + r d = h), none twice, no zero tap beyond
    dy's border, which the kernel's bounds test drops."""
    n, c, h, w, k, r, s = 1, 2, 9, 8, 3, 3, 4
    oh = (h + sum(pads[0]) - dilation[0] * (r - 1) - 1) // stride[0] + 1
    ow = (w + sum(pads[1]) - dilation[1] * (s - 1) - 1) // stride[1] + 1
    sizes = (n, c, h, w, k, r, s, oh, ow)
    table = conv_kernels.data_phase_table(sizes, stride, pads, dilation, 4).reshape(-1, 4)
    phases = stride[0] * stride[1]
    got, covered, issued = [], [], 0
    for p in range(phases):
        (offset, count, _, columns), (h0, w0, rows, cols), (oh0, ow0, weights, _) = \
            table[3 * p:3 * p + 3]
        assert columns == n * rows * cols
        taps = table[offset:offset + count]
        # the weight indices again, on their own from a multiple of 8 int32 (the kernel
        # reads 4, or 8 at TILE_K 16, as one vector aligned to its size)
        assert weights % 8 == 0
        assert (table.ravel()[weights:weights + count] == taps[:, 3]).all()
        for hq in range(rows):
            for wq in range(cols):
                hh, ww, oh_top, ow_top = h0 + hq * stride[0], w0 + wq * stride[1], oh0 + hq, \
                    ow0 + wq
                covered.append((hh, ww))
                for dy_step, j_bit, l_bit, weight_index in taps:
                    issued += 1
                    j, l_ = _one_hot_offset(j_bit), _one_hot_offset(l_bit)
                    y, x = oh_top - j, ow_top - l_
                    if 0 <= y < oh and 0 <= x < ow:
                        kk, rs = divmod(int(weight_index), c * r * s)
                        assert rs < r * s  # channel 0's taps: the kernel adds c R S
                        assert dy_step == kk * oh * ow - j * ow - l_
                        got.append((hh, ww, kk, rs // s, rs % s, y, x))
    assert sorted(covered) == [(i, j) for i in range(h) for j in range(w)]
    want = [(i, j, kk, rr, ss, y, x) for i in range(h) for j in range(w) for kk in range(k)
            for rr in range(r) for ss in range(s) for y in range(oh) for x in range(ow)
            if y * stride[0] - pads[0][0] + rr * dilation[0] == i
            and x * stride[1] - pads[1][0] + ss * dilation[1] == j]
    assert sorted(got) == sorted(want)
    # a gather over only the taps of each phase: at most R S K per position, 1/(sh sw)
    # of them on average
    assert issued <= h * w * k * -(-r // stride[0]) * -(-s // stride[1])


def _one_hot_offset(bit):
    """The window offset a tap table gives as ``1 << offset`` (offset < WINDOW_EXTENT)."""
    bit = int(bit)
    assert 0 < bit < 1 << conv_kernels.WINDOW_EXTENT and bit & (bit - 1) == 0, hex(bit)
    return bit.bit_length() - 1


def _window_bits(lo, hi):
    """kernels/conv2d.cu's window_bits: offsets lo <= i < hi below WINDOW_EXTENT."""
    return sum(1 << i for i in range(max(lo, 0), min(hi, conv_kernels.WINDOW_EXTENT)))


def _tap_inside(tap, rows_in, cols_in):
    """kernels/conv2d.cu's tap_inside, on the int32 table entries."""
    y, z = int(tap[1]) & 0xFFFFFFFF, int(tap[2]) & 0xFFFFFFFF
    return (y & ~rows_in) | (z & ~cols_in) == 0


def _kernel_define(name):
    """The value of ``#define name`` in kernels/conv2d.cu."""
    import os
    import re
    with open(os.path.join(runtime.kernel_dir(), "conv2d.cu")) as f:
        return eval(re.search(rf"^#define {name} ([^/\n]+)", f.read(), re.M).group(1))


@pytest.mark.parametrize("stride, pads, dilation", [
    ((1, 1), ((0, 0), (0, 0)), (1, 1)), ((2, 3), ((1, 1), (2, 0)), (1, 1)),
    ((4, 4), ((2, 2), (2, 2)), (1, 1)), ((2, 1), ((1, 1), (2, 2)), (3, 2))], ids=str)
def test_tap_tables_run_past_each_list_with_taps_outside_every_window(stride, pads, dilation):
    """The GEMMs' B fetch reads a step's TILE_K taps with no bound on the index
    (kernels/conv2d.cu, TAP_PADDING): every tap list is followed by TAP_PADDING taps
    (at least the largest TILE_K, 16) that the kernels' window test drops for every
    output column; the constants are the kernel's."""
    assert conv_kernels.TAP_PADDING == _kernel_define("TAP_PADDING") >= 16
    assert conv_kernels.TAP_OUTSIDE == _kernel_define("TAP_OUTSIDE")
    assert conv_kernels.WINDOW_EXTENT == _kernel_define("WINDOW_EXTENT")
    n, c, h, w, k, r, s = 2, 3, 9, 8, 3, 3, 4
    oh = (h + sum(pads[0]) - dilation[0] * (r - 1) - 1) // stride[0] + 1
    ow = (w + sum(pads[1]) - dilation[1] * (s - 1) - 1) // stride[1] + 1
    sizes = (n, c, h, w, k, r, s, oh, ow)

    taps = conv_kernels.forward_taps(c, h, w, r, s, dilation).reshape(-1, 4)
    assert len(taps) == c * r * s + conv_kernels.TAP_PADDING
    windows = [(_window_bits(-ih0, h - ih0), _window_bits(-iw0, w - iw0))
               for ih0 in range(-pads[0][0], oh * stride[0] - pads[0][0], stride[0])
               for iw0 in range(-pads[1][0], ow * stride[1] - pads[1][0], stride[1])]
    for t, tap in enumerate(taps[:c * r * s]):  # the real taps: inside where x is
        i, j = _one_hot_offset(tap[1]), _one_hot_offset(tap[2])
        rr, ss = t % (r * s) // s, t % s
        assert (i, j) == (rr * dilation[0], ss * dilation[1])
        for (rows_in, cols_in), (ih0, iw0) in zip(windows, (
                (a, b) for a in range(-pads[0][0], oh * stride[0] - pads[0][0], stride[0])
                for b in range(-pads[1][0], ow * stride[1] - pads[1][0], stride[1]))):
            assert _tap_inside(tap, rows_in, cols_in) == (0 <= ih0 + i < h and 0 <= iw0 + j < w)
    for tap in taps[c * r * s:]:
        assert not any(_tap_inside(tap, *window) for window in windows)
        assert not _tap_inside(tap, 2 ** 31 - 1, 2 ** 31 - 1)  # nor any window at all
    table = conv_kernels.data_phase_table(sizes, stride, pads, dilation, 4).reshape(-1, 4)
    for p in range(stride[0] * stride[1]):
        (offset, count, _, _), (_, _, rows, cols), (oh0, ow0, _, _) = table[3 * p:3 * p + 3]
        padding = table[offset + count:offset + count + conv_kernels.TAP_PADDING]
        assert len(padding) == conv_kernels.TAP_PADDING
        for tap in padding:
            assert not _tap_inside(tap, 2 ** 31 - 1, 2 ** 31 - 1)
            assert tap[3] == 0  # an A index inside the filter, though never read
        if p + 1 < stride[0] * stride[1]:
            assert table[3 * (p + 1)][0] == offset + count + conv_kernels.TAP_PADDING


def test_filters_wider_than_the_window_bits_take_the_xp_path():
    """The tap tables give window offsets as bits below WINDOW_EXTENT: a (dilated)
    filter of more rows or columns is not the kernels' (fits), and the op still
    computes it, down the xp path."""
    extent = conv_kernels.WINDOW_EXTENT
    assert conv_kernels.fits((1, 1, 40, 40), (1, 1, extent, 1), (10, 40))
    assert not conv_kernels.fits((1, 1, 40, 40), (1, 1, extent + 1, 1), (9, 40))
    assert not conv_kernels.fits((1, 1, 40, 40), (1, 1, 1, extent + 1), (40, 9))


def test_a_weight_gradient_whose_scratch_slice_would_pass_int32_takes_the_xp_path():
    """Channels not a multiple of 4: the weight GEMM writes a scratch slice past its
    partial sums, so K C R S twice must still fit the kernels' 32-bit offsets (the
    weight alone did: the padded columns' sums were written past 2**31)."""
    x_shape, out_hw = (1, 77777, 3, 3), (3, 3)
    assert conv_kernels.fits(x_shape, (1500, 77777, 3, 3), out_hw)
    assert not conv_kernels.fits(x_shape, (3000, 77777, 3, 3), out_hw)
    assert conv_kernels.fits((1, 77776, 3, 3), (3000, 77776, 3, 3), out_hw)  # no padding


@pytest.mark.parametrize("sms", [1, 8, 132])
@pytest.mark.parametrize("case", PLAN_CASES, ids=str)
def test_split_gemm_slices_end_on_whole_steps(case, sms):
    """The forward and backward-data GEMMs' fetch has no bound on the reduction index
    but the tap lists' padding: so every slice of a split but the last (which ends at
    its list's end) must span whole steps of the largest TILE_K, 16."""
    n, c, h, w, k, r, s, stride, padding = case
    pads = tuple((p, p) for p in ((padding,) * 2 if isinstance(padding, int) else padding))
    oh = (h + 2 * pads[0][0] - r) // stride[0] + 1
    ow = (w + 2 * pads[1][0] - s) // stride[1] + 1
    sizes = (n, c, h, w, k, r, s, oh, ow)
    for plan in (conv_plan.forward_plan(sizes, stride, pads, "float32", False, sms),
                 conv_plan.data_plan(sizes, stride, pads, "float32", False, sms)):
        if plan.split > 1 and not plan.kernel.endswith("_direct"):
            assert plan.chunk % 16 == 0, plan


SIZES_KERNEL = r"""
struct Sizes { int rows, cols, stride; };
extern "C" __global__ void copy_sizes(int* out, const Sizes s, int scale) {
    out[0] = s.rows * scale;
    out[1] = s.cols * scale;
    out[2] = s.stride * scale;
}
"""
SIZES_FIELDS = ("rows", "cols", "stride")


@needs_compiler
def test_the_emulator_takes_a_struct_by_value_as_a_numpy_void_of_its_int32_fields():
    """A struct of ints passed by value (as the geometries are) takes the bytes of a
    numpy.void of exactly its int32 fields (runtime.geometry), and refuses with the
    argument, the struct and what came: an array (a pointer: its address read as the
    sizes), a plain int32 (4 bytes where the kernel reads 12), too few fields, a field
    not int32, a tuple, overlapping fields."""
    lib = cuda_emulator.build(SIZES_KERNEL, ("-std=c++17",))
    struct = lib.signatures["copy_sizes"][1]
    assert (struct.pointer, struct.struct, struct.count) == (False, "Sizes", 3)
    out = numpy.full(3, -1, numpy.int32)

    def call(arg):
        cuda_emulator.launch(lib, "copy_sizes", (1, 1, 1), (1, 1, 1),
                             [cuda_emulator.Pointer(out.ctypes.data, "int32", 3), arg,
                              numpy.int32(3)])

    call(runtime.geometry(SIZES_FIELDS, (5, 7, 2)))
    assert out.tolist() == [15, 21, 6]
    mixed = numpy.dtype([("rows", numpy.int32), ("cols", numpy.float32),
                         ("stride", numpy.int32)])
    sizes = numpy.array([5, 7, 2], numpy.int32)
    wrong = {
        "an array of int32 .a device pointer": cuda_emulator.Pointer(sizes.ctypes.data,
                                                                     "int32", 3),
        "a int32 scalar": numpy.int32(5),
        "a numpy.void of 2 fields": runtime.geometry(SIZES_FIELDS[:2], (5, 7)),
        "field 'cols' of float32": numpy.array((5, 7.0, 2), mixed)[()],
        "a tuple value": (5, 7, 2),
        r"fields at bytes \[0, 0, 4\] \(overlapping or apart\)": numpy.zeros((), numpy.dtype(
            {"names": SIZES_FIELDS, "formats": [numpy.int32] * 3, "offsets": [0, 4, 0],
             "itemsize": 12}))[()],
    }
    for got, arg in wrong.items():
        with pytest.raises(cuda_emulator.LaunchError,
                           match=rf"copy_sizes argument 1 \(const Sizes s\): expected a Sizes "
                                 rf"by value, a numpy.void of 3 int32 fields \(12 bytes\), "
                                 rf"got {got}"):
            call(arg)
    assert out.tolist() == [15, 21, 6]  # nothing ran


def test_the_emulator_refuses_a_kernel_parameter_cell_shorter_than_the_parameter():
    """The thunk copies each parameter out of its kernelParams cell: a cell shorter than
    the struct would be read past its end."""
    struct = cuda_emulator.Param("const Sizes s", False, "int32", 3, "Sizes")
    assert ctypes.sizeof(cuda_emulator.parameter_cell(
        "k", 1, struct, runtime.geometry(SIZES_FIELDS, (1, 2, 3)))) == 12
    with pytest.raises(cuda_emulator.LaunchError,
                       match=r"k argument 1 \(const Sizes s\): the kernel reads 12 bytes, the "
                             r"argument holds 8"):
        cuda_emulator.parameter_cell("k", 1, struct, numpy.int32(1))
