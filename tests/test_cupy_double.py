"""The CuPy test double refuses what real CuPy refuses: each rule, broken on
purpose, must raise. Runs with GPUNET_CUPY_DOUBLE=1 (``make test`` does)."""
import numpy
import pytest

from .helpers import CUPY_DOUBLE

pytestmark = [pytest.mark.cupy_double,
              pytest.mark.skipif(not CUPY_DOUBLE, reason="the CuPy test double is off "
                                 "(GPUNET_CUPY_DOUBLE=1; make test runs it)")]


@pytest.fixture
def cp():
    import cupy
    assert cupy.IS_TEST_DOUBLE
    return cupy


def test_no_implicit_conversion_to_numpy(cp):
    x = cp.arange(4.0)
    assert not isinstance(x, numpy.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion"):
        numpy.asarray(x)
    with pytest.raises(TypeError, match="Implicit conversion"):
        x.__array__()
    with pytest.raises(TypeError):
        numpy.array([x, x])
    assert isinstance(x.get(), numpy.ndarray) and isinstance(cp.asnumpy(x), numpy.ndarray)


def test_no_numpy_arrays_in_device_operations(cp):
    x, host = cp.ones(3), numpy.ones(3)
    for wrong in (lambda: x + host, lambda: host + x, lambda: x * host, lambda: cp.add(x, host),
                  lambda: cp.concatenate([x, host]), lambda: cp.where(x > 0, host, x),
                  lambda: x.dot(host), lambda: numpy.add(host, x)):
        with pytest.raises(TypeError, match="NumPy array"):
            wrong()
    assert float((x + 1.5 + numpy.float32(2)).sum()) == 13.5  # scalars are fine


def test_only_what_real_cupy_offers(cp):
    x = cp.ones((2, 2))
    with pytest.raises(AttributeError):
        cp.nanpercentile  # noqa: B018 - NumPy has it, CuPy does not
    with pytest.raises(TypeError, match="no implementation found"):
        numpy.nanpercentile(x, 50)  # __array_function__ has no CuPy twin to call
    with pytest.raises(AttributeError):
        x.tofile_does_not_exist  # noqa: B018
    with pytest.raises(AttributeError):
        x.ctypes  # noqa: B018 - NumPy arrays have it, CuPy arrays do not
    with pytest.raises(TypeError, match="unexpected keyword argument 'where'"):
        cp.sum(x, where=x > 0)
    with pytest.raises(AttributeError):
        cp.random.default_rng(0).permutation  # noqa: B018 - not in CuPy's Generator
    assert float(numpy.max(x)) == 1.0  # NumPy functions CuPy implements dispatch to it


def test_dtypes_a_gpu_cannot_hold(cp):
    x = cp.zeros(4, dtype=cp.float32)
    with pytest.raises(TypeError, match="dtype"):
        x.view("V8")
    with pytest.raises(TypeError, match="dtype"):
        cp.empty(3, dtype=object)
    with pytest.raises(TypeError, match="dtype"):
        cp.asarray(numpy.array(["a", "b"]))


def test_scalars_and_transfers_behave_as_in_cupy(cp):
    x = cp.asarray(numpy.array([2.5]))
    assert float(x) == 2.5 and int(x) == 2 and bool(x)
    total = cp.arange(3).sum()
    assert isinstance(total, cp.ndarray) and total.ndim == 0  # a 0-d array, not a scalar
    with pytest.raises(TypeError):
        float(cp.ones(2))
    with pytest.raises(ValueError):
        bool(cp.ones(2))
    assert cp.asarray(x) is x
    assert cp.get_array_module(x) is cp and cp.get_array_module(numpy.ones(1)) is numpy


def test_the_device_says_it_is_the_double(cp):
    props = cp.cuda.runtime.getDeviceProperties(0)
    assert b"CuPy test double" in props["name"] and b"not a GPU" in props["name"]
    assert cp.cuda.runtime.getDeviceCount() == 1
    assert "testdouble" in cp.__version__


ORDER_KERNEL = r"""
extern "C" __global__ void last_writer(int* out) { out[0] = threadIdx.x; }
extern "C" __global__ void scale(const float* x, float* y, int n, float a) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i];
}
extern "C" __global__ void __launch_bounds__(64) divergent(float* y) {
    __shared__ float cell[64];
    if (threadIdx.x % 2) return;
    cell[threadIdx.x] = 1;
    __syncthreads();
    y[threadIdx.x] = cell[threadIdx.x];
}
"""


def test_raw_module_compiles_with_nvrtc_and_checks_launches(cp):
    from cupy._raw import CompileException

    from .cuda_emulator import LaunchError
    with pytest.raises(CompileException, match="NVRTC"):
        cp.RawModule(code='extern "C" __global__ void broken(float* y) { y[0] = ; }')
    module = cp.RawModule(code=ORDER_KERNEL, options=("-std=c++17",))
    assert set(module.cubins) == {"sm_80", "sm_90"}
    scale = module.get_function("scale")
    x, y = cp.arange(10, dtype=cp.float32), cp.zeros(10, dtype=cp.float32)
    scale((1,), (16,), (x, y, numpy.int32(10), numpy.float32(2)))
    assert y.get().tolist() == [2.0 * i for i in range(10)]
    # a zero grid: CuPy launches max(1, grid[i]) blocks, so one block runs (and its
    # guard keeps it from writing), where the CUDA API would refuse the launch
    scale((0,), (16,), (x, y, numpy.int32(0), numpy.float32(3)))
    assert y.get().tolist() == [2.0 * i for i in range(10)]
    wrong_calls = {
        "takes 4 arguments": (x, y, numpy.int32(10)),
        "4 bytes .PTX., but a int64 scalar": (x, y, 10, numpy.float32(2)),  # a Python int
        "array of float32, got float64": (x, cp.zeros(10), numpy.int32(10), numpy.float32(2)),
        "not C-contiguous": (x, cp.zeros(20, dtype=cp.float32)[::2], numpy.int32(10),
                             numpy.float32(2)),
    }
    for message, args in wrong_calls.items():
        with pytest.raises(LaunchError, match=message):
            scale((1,), (16,), args)
    with pytest.raises(TypeError, match="Only numpy.ndarrays of size one can be passed by "
                                        "value"):
        scale((1,), (16,), (x, numpy.zeros(10, numpy.float32), numpy.int32(10),
                            numpy.float32(2)))
    with pytest.raises(RuntimeError, match="blockDim.x = 1025"):
        scale((1,), (1025,), (x, y, numpy.int32(10), numpy.float32(2)))
    with pytest.raises(RuntimeError, match="1056 threads"):
        scale((1,), (32, 33), (x, y, numpy.int32(10), numpy.float32(2)))
    with pytest.raises(RuntimeError, match="gridDim.y = 65536"):
        scale((1, 65536), (16,), (x, y, numpy.int32(10), numpy.float32(2)))
    with pytest.raises(RuntimeError, match="shared memory"):
        scale((1,), (16,), (x, y, numpy.int32(10), numpy.float32(2)), shared_mem=49153)
    divergent = module.get_function("divergent")
    with pytest.raises(RuntimeError, match="__launch_bounds__"):
        divergent((1,), (128,), (y,))
    with pytest.raises(LaunchError, match="divergent __syncthreads"):
        divergent((1,), (64,), (cp.zeros(64, dtype=cp.float32),))


SIZES_KERNEL = r"""
struct Sizes { int rows, cols, stride; };
extern "C" __global__ void copy_sizes(int* out, const Sizes s) {
    out[0] = s.rows;
    out[1] = s.cols;
    out[2] = s.stride;
}
"""


def test_a_struct_passes_by_value_as_cupy_passes_it(cp):
    """As CuPy's _pointer: a structured NumPy scalar (numpy.void) or a NumPy array of
    one element goes by value, its bytes checked against the PTX parameter's size
    (`.param .align 4 .b8 name[12]`) and its fields against the struct (the
    emulator); a tuple or a list is no scalar (CScalar: 'Unsupported type'), a longer
    NumPy array no value, a device array a pointer of the wrong size."""
    from .cuda_emulator import LaunchError
    module = cp.RawModule(code=SIZES_KERNEL, options=("-std=c++17",))
    assert module.kernels["copy_sizes"].param_bytes == (8, 12)
    copy_sizes, out = module.get_function("copy_sizes"), cp.full(3, -1, dtype=cp.int32)
    sizes = numpy.dtype([("rows", numpy.int32), ("cols", numpy.int32),
                         ("stride", numpy.int32)])
    copy_sizes((1,), (1,), (out, numpy.array((5, 7, 2), sizes)[()]))
    assert out.get().tolist() == [5, 7, 2]
    copy_sizes((1,), (1,), (out, numpy.array([(4, 3, 1)], sizes)))
    assert out.get().tolist() == [4, 3, 1]
    for wrong in ((5, 7, 2), [5, 7, 2]):
        with pytest.raises(TypeError, match=f"argument 1: Unsupported type {type(wrong)}"):
            copy_sizes((1,), (1,), (out, wrong))
    with pytest.raises(TypeError, match=r"numpy.ndarray of shape \(3,\)"):
        copy_sizes((1,), (1,), (out, numpy.array([5, 7, 2], numpy.int32)))
    pair = numpy.dtype([("rows", numpy.int32), ("cols", numpy.int32)])
    mixed = numpy.dtype([("rows", numpy.int32), ("cols", numpy.float32),
                         ("stride", numpy.int32)])
    refused = {
        r"parameter is 12 bytes \(PTX\), but a numpy.void of 2 fields of 8 bytes":
            numpy.array((5, 7), pair)[()],
        r"parameter is 12 bytes \(PTX\), but a pointer of 8 bytes":
            cp.asarray(numpy.array([5, 7, 2], numpy.int32)),
        r"expected a Sizes by value, .* got field 'cols' of float32":
            numpy.array((5, 7.0, 2), mixed)[()],
    }
    for message, wrong in refused.items():
        with pytest.raises(LaunchError, match=message):
            copy_sizes((1,), (1,), (out, wrong))
    assert out.get().tolist() == [4, 3, 1]


def test_thread_order_flips_between_launches(cp):
    module = cp.RawModule(code=ORDER_KERNEL, options=("-std=c++17",))
    out = cp.zeros(1, dtype=cp.int32)
    seen = set()
    for _ in range(2):
        module.get_function("last_writer")((1,), (32,), (out,))
        seen.add(int(out))
    assert seen == {0, 31}  # a race on out[0] shows as two results


def test_every_name_the_double_offers_is_real_cupys(cp):
    from cupy import _manifest
    spaces = {"cupy": cp, "cupy.ndarray": cp.ndarray, "cupy.cuda": cp.cuda,
              "cupy.cuda.runtime": cp.cuda.runtime, "cupy.cuda.memory": cp.cuda.memory,
              "cupy.cuda.Device": cp.cuda.Device, "cupy.cuda.Stream": cp.cuda.Stream,
              "cupy.cuda.Event": cp.cuda.Event, "cupy.random": cp.random, "cupy.linalg": cp.linalg}
    for space, obj in spaces.items():
        own = {n for n in vars(obj) if not n.startswith("_")
               and not (isinstance(obj, type(cp)) and getattr(vars(obj)[n], "__module__", "")
                        in ("typing", "__future__"))}
        if space == "cupy.cuda.runtime":
            own = {n for n in own if n[0].islower() or n == "CUDARuntimeError"}
        extra = sorted(n for n in own if not _manifest.offered(space, n)
                       and n not in ("IS_TEST_DOUBLE", "annotations", "DEVICE_NAME",
                                     "COMPUTE_CAPABILITY", "TOTAL_MEMORY", "default_pool"))
        assert not extra, f"{space} of the double offers {extra}, which the real one lacks"


def test_each_kernel_counts_the_module_shared_arrays_it_names(cp):
    """__shared__ arrays of inlined functions are module-level in PTX: a kernel gets
    those it references, as ptxas allocates them (three tiles in conv2d.cu would
    otherwise add up past 48 KiB for every kernel)."""
    from cupy._raw import parse_ptx
    ptx = """
.shared .align 16 .b8 _ZZ4tileE2As[16384];
.shared .align 16 .b8 _ZZ4wideE2As[20480];
.visible .entry first(.param .u64 first_param_0)
.maxntid 256, 1, 1
{
    mov.u32 %r1, _ZZ4tileE2As;
}
.visible .entry second(.param .u64 second_param_0, .param .b8 second_param_1[12])
{
    .shared .align 4 .b8 local[64];
    mov.u32 %r1, _ZZ4wideE2As;
    mov.u32 %r2, _ZZ4tileE2As;
}
"""
    kernels = parse_ptx(ptx)
    assert kernels["first"].static_shared == 16384 and kernels["first"].max_threads == 256
    assert kernels["second"].static_shared == 64 + 20480 + 16384
    assert kernels["second"].param_bytes == (8, 12)


@pytest.mark.cupy_double
def test_the_doubles_pool_holds_freed_blocks_as_cupys_does():
    if not CUPY_DOUBLE:
        pytest.skip("the CuPy test double is not in use")
    import cupy
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    start = pool.used_bytes()
    a = cupy.zeros(1 << 20, dtype=cupy.float32)
    del a
    assert pool.used_bytes() == start and pool.total_bytes() == start + 4 * 2**20
    assert pool.free_bytes() == 4 * 2**20
    pool.free_all_blocks()
    assert pool.total_bytes() == start and pool.free_bytes() == 0
