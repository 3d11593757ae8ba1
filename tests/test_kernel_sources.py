"""The kernel sources as the loader hands them to the compiler: headers inlined (so
that CuPy's cache sees a header's edits), and every file compiling for each GPU
architecture gpunet supports, sm_75 included."""
import os
import shutil
import subprocess

import numpy
import pytest

from gpunet.cuda import runtime

from . import cuda_emulator

# every kernels/*.cu, so that a new file is compiled here without being listed
KERNEL_FILES = tuple(sorted(f[:-len(".cu")] for f in os.listdir(runtime.kernel_dir())
                            if f.endswith(".cu")))


@pytest.fixture
def kernel_copy(tmp_path, monkeypatch):
    """A copy of kernels/ that ``runtime.kernel_dir`` points at."""
    folder = tmp_path / "kernels"
    shutil.copytree(runtime.kernel_dir(), folder)
    monkeypatch.setattr(runtime, "kernel_dir", lambda: str(folder))
    return folder


class _FakeCupy:
    """Records the source ``RawModule`` is given."""

    def __init__(self):
        self.codes = []
        fake = self

        class RawModule:
            def __init__(self, code, options):
                fake.codes.append(code)

        self.RawModule = RawModule


def test_raw_module_source_changes_with_a_header(kernel_copy):
    """CuPy's on-disk cache keys on the source string and the options only: an edit to
    common.cuh must change the string RawModule gets, or the old cubin keeps running."""
    fake = _FakeCupy()
    runtime._module(fake, "pool2d", "float32", 0)
    header = kernel_copy / "common.cuh"
    header.write_text(header.read_text() + "\n// edited\n")
    runtime._module(fake, "pool2d", "float32", 1)  # another cache entry of _module
    before, after = fake.codes
    assert before != after and "// edited" in after
    assert '#include "common.cuh"' not in after and "__device__ __forceinline__ int divide" in after


def test_headers_are_inlined_once_and_recursively(kernel_copy):
    """A header that includes another, and a file including both: each inlined once
    (without its ``#pragma once``, "in main file" there), system includes left alone."""
    (kernel_copy / "inner.cuh").write_text("#pragma once\nint inner_value;\n")
    (kernel_copy / "outer.cuh").write_text('#pragma once\n#include "inner.cuh"\nint outer;\n')
    (kernel_copy / "probe.cu").write_text(
        '#include <cstdio>\n#include "outer.cuh"\n#include "inner.cuh"\nint probe;\n')
    text = runtime.source("probe")
    assert text.count("int inner_value;") == 1 and text.count("int outer;") == 1
    assert "#include <cstdio>" in text and '#include "' not in text and "pragma" not in text
    assert '#line 1 "outer.cuh"' in text and '#line 1 "inner.cuh"' in text
    assert '#line 4 "probe.cu"\nint probe;' in text


@pytest.mark.skipif(cuda_emulator.compiler() is None, reason="g++ is needed")
@pytest.mark.parametrize("where", ["common.cuh", "pool2d.cu"])
def test_compile_errors_name_the_file_and_line(kernel_copy, tmp_path, where):
    """``#line`` directives: an error in the inlined header names common.cuh and its
    line; one after the include names the .cu file's own line."""
    path = kernel_copy / where
    lines = path.read_text().split("\n")
    at = len(lines) - 2 if where == "common.cuh" else len(lines) - 3
    lines.insert(at, "this_is_not_cxx;")
    path.write_text("\n".join(lines))
    unit = tmp_path / "unit.cpp"
    unit.write_text(runtime.source("pool2d"))
    done = subprocess.run([cuda_emulator.compiler(), "-std=c++20", "-fsyntax-only", "-include",
                           os.path.join(cuda_emulator.HERE, "emulate.h"), str(unit)],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert f"{where}:{at + 1}:" in done.stderr, done.stderr[-2000:]



NVCC = shutil.which("nvcc") or next((p for p in ("/usr/local/bin/nvcc", "/usr/local/cuda/bin/nvcc")
                                     if os.path.exists(p)), None)


@pytest.mark.skipif(NVCC is None, reason="nvcc is needed to compile for sm_75")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", KERNEL_FILES)
def test_every_kernel_file_compiles_for_sm75(tmp_path, name, dtype):
    """Turing (sm_75) has no TF32: conv2d.cu's cvt.tf32 and mma .tf32 must be guarded,
    or ptxas rejects the whole file there. The source and options are the loader's;
    the double compiles for sm_80 and sm_90 already, so sm_75 is the one left."""
    unit = tmp_path / f"{name}.cu"
    unit.write_text(runtime.source(name))
    done = subprocess.run([NVCC, "-arch=sm_75", "-cubin", "-Werror", "all-warnings",
                           *runtime.compile_options(dtype), "-o", str(tmp_path / "out.cubin"),
                           str(unit)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning" not in done.stderr.lower(), done.stderr[-3000:]


class _Device:
    def __init__(self, capability):
        self.compute_capability = capability


class _FakeXp:
    def __init__(self, capability):
        self.cuda = type("cuda", (), {"Device": staticmethod(lambda: _Device(capability))})


def test_tf32_only_from_sm80(gpunet_settings):
    """The launcher picks the `_tf32` kernels only where the device has TF32 tensor
    cores; below sm_80 those kernels are the float ones anyway (CONV_TF32 is 0)."""
    from gpunet.cuda import conv2d as conv_kernels
    assert not runtime.tf32_supported(_FakeXp("75"))
    assert runtime.tf32_supported(_FakeXp("80")) and runtime.tf32_supported(_FakeXp("90"))
    gpunet_settings(allow_tf32=True)
    assert conv_kernels.tile(200, "float32", tensor_cores=True)[0] == "_tf32"
    assert conv_kernels.tile(200, "float32", tensor_cores=False)[0] == ""


@pytest.mark.skipif(cuda_emulator.compiler() is None, reason="g++ is needed")
def test_no_tf32_launches_without_tensor_cores(monkeypatch, gpunet_settings):
    """With TF32 allowed on a device without it, every pass takes the float kernels."""
    from gpunet import ops
    monkeypatch.setattr(runtime, "launch", cuda_emulator.emulated_launch)
    gpunet_settings(allow_tf32=True)
    rng = numpy.random.default_rng(3)
    # 17 channels, 128 filters: every pass takes a GEMM (not a _direct kernel)
    x = rng.standard_normal((2, 17, 6, 6)).astype("float32")
    weight = rng.standard_normal((128, 17, 3, 3)).astype("float32")
    for supported in (True, False):
        monkeypatch.setattr(runtime, "tf32_supported", lambda xp, s=supported: s)
        cuda_emulator.launches.clear()
        y, ctx = ops.conv2d_forward(x, weight, None, 1, 1, use_kernels=True)
        ctx.backward(numpy.ones_like(y))
        # "_tf32" inside the name too: the weight gradient's here is conv2d_bwd_weight_tf32_vec
        tf32 = [name for name, _, _ in cuda_emulator.launches if "_tf32" in name]
        assert len(tf32) == (3 if supported else 0), cuda_emulator.launches


GEOMETRY_STRUCTS = {"conv2d": "ConvGeometry", "pool2d": "PoolGeometry",
                    "batchnorm": "ChannelGeometry"}


@pytest.mark.parametrize("name", sorted(GEOMETRY_STRUCTS))
def test_each_geometry_struct_is_a_kernel_parameter_by_value_with_the_launchers_fields(name):
    """The launcher's GEOMETRY_FIELDS are the C struct's, in order (runtime.geometry
    packs them as its bytes), and every kernel that takes the struct takes it by value
    (a pointer would read the packed sizes as an address)."""
    import importlib
    launcher = importlib.import_module(f"gpunet.cuda.{name}")
    code = runtime.source(name)
    struct = GEOMETRY_STRUCTS[name]
    fields = dict(cuda_emulator._INT_STRUCT.findall(code))[struct]
    assert tuple(f.strip() for f in fields.split(",")) == launcher.GEOMETRY_FIELDS
    taking = {kernel: [p for p in params if p.struct == struct or struct in p.declaration]
              for kernel, params in cuda_emulator.signatures(code, "float").items()}
    taking = {kernel: params for kernel, params in taking.items() if params}
    assert taking, f"no kernel of {name}.cu takes a {struct}"
    for kernel, params in taking.items():
        assert [(p.pointer, p.struct, p.count) for p in params] == \
            [(False, struct, len(launcher.GEOMETRY_FIELDS))], (kernel, params)
