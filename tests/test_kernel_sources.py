"""The kernel sources as the loader hands them to the compiler: headers inlined (so
that CuPy's cache sees a header's edits), and every file compiling for each GPU
architecture gpunet supports, sm_75 included."""
import os
import shutil
import subprocess

import pytest

from gpunet.cuda import runtime

from . import cuda_emulator

KERNEL_FILES = ("conv2d", "pool2d", "batchnorm")


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
    (``#pragma once`` stays in the text, harmless), system includes left alone."""
    (kernel_copy / "inner.cuh").write_text("#pragma once\nint inner_value;\n")
    (kernel_copy / "outer.cuh").write_text('#pragma once\n#include "inner.cuh"\nint outer;\n')
    (kernel_copy / "probe.cu").write_text(
        '#include <cstdio>\n#include "outer.cuh"\n#include "inner.cuh"\nint probe;\n')
    text = runtime.source("probe")
    assert text.count("int inner_value;") == 1 and text.count("int outer;") == 1
    assert "#include <cstdio>" in text and '#include "' not in text
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

