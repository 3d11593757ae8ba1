"""Run in a separate process with the real CuPy (never the double): reads a JSON
request on stdin, writes a JSON answer on stdout.

- ``{"do": "manifest"}``: the names, kinds and readable signatures of what the
  installed CuPy offers, for the double to offer no more;
- ``{"do": "compile", "source": ..., "options": [...], "targets": [...]}``: the
  source compiled by NVRTC through CuPy's own compiler code (``_NVRTCProgram``,
  the class ``RawModule`` compiles with), once per target, with the options
  CuPy adds on a real device. CuPy's public entry points ask the driver for the
  device's architecture first, which fails without a GPU, so the architecture
  is given here instead.
"""
import base64
import inspect
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

import cupy  # noqa: E402
import cupy.cuda.memory  # noqa: E402,F401
import cupy.cuda.runtime  # noqa: E402,F401
import numpy  # noqa: E402
from cupy.cuda import compiler  # noqa: E402

NAMESPACES = ["cupy", "cupy.ndarray", "cupy.random", "cupy.random.Generator", "cupy.cuda",
              "cupy.cuda.runtime", "cupy.cuda.memory", "cupy.cuda.Device", "cupy.cuda.Stream",
              "cupy.cuda.Event", "cupy.cuda.MemoryPool", "cupy.linalg", "cupy.RawModule",
              "cupy.RawKernel", "cupy.ufunc"]


def _resolve(dotted):
    obj = cupy
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def _signature(obj):
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    return {"names": [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)],
            "positional": [p.name for p in params
                           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)],
            "var_positional": any(p.kind == p.VAR_POSITIONAL for p in params),
            "var_keyword": any(p.kind == p.VAR_KEYWORD for p in params)}


def manifest():
    result = {"version": cupy.__version__, "namespaces": {}}
    for dotted in NAMESPACES:
        space = _resolve(dotted)
        entries = {}
        for name in dir(space):
            if name.startswith("_") and not name.startswith("__"):
                continue
            try:
                obj = getattr(space, name)
            except Exception:  # noqa: BLE001 - some attributes need a GPU
                entries[name] = {"kind": "attribute"}
                continue
            numpy_twin = dotted == "cupy" and getattr(numpy, name, None) is obj
            kind = ("module" if inspect.ismodule(obj) else "class" if inspect.isclass(obj)
                    else "ufunc" if type(obj).__name__ == "ufunc"
                    else "callable" if callable(obj) else "attribute")
            entries[name] = {"kind": kind, "numpy_object": numpy_twin,
                             "signature": _signature(obj) if callable(obj) else None}
        result["namespaces"][dotted] = entries
    for dotted in NAMESPACES:  # lazily loaded attributes (cupy.random.Generator) miss dir()
        parent, _, name = dotted.rpartition(".")
        if parent:
            result["namespaces"][parent].setdefault(name, {"kind": "class", "signature": None,
                                                           "numpy_object": False})
    return result


def compile_source(source, options, targets):
    out = {}
    for target in targets:  # "sm_80" (cubin, as CuPy builds) or "compute_90" (PTX)
        method = "cubin" if target.startswith("sm_") else "ptx"
        full = (*options, "-ftz=true", f"-arch={target}", "--device-as-default-execution-space")
        major, minor = compiler._get_nvrtc_version()
        if (major, minor) >= (12, 8):
            full += ("--pch",)
        program = compiler._NVRTCProgram(source, "", (), (), name_expressions=None,
                                         method=method)
        try:
            binary, _ = program.compile(full)
        except compiler.CompileException as exc:
            return {"error": f"NVRTC rejected the source for {target}: {exc}"}
        out[target] = base64.b64encode(binary).decode()
    return {"outputs": out, "nvrtc": list(compiler._get_nvrtc_version())}


def main():
    request = json.load(sys.stdin)
    if request["do"] == "manifest":
        answer = manifest()
    else:
        answer = compile_source(request["source"], request["options"], request["targets"])
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
