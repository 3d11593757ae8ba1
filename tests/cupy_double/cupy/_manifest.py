"""What the installed real CuPy offers, read once by ``real_cupy.py`` in another
process (this one has the double under the name ``cupy``) and cached on disk."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile

DOUBLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(DOUBLE_ROOT, "real_cupy.py")


def _real_cupy_init() -> str:
    for entry in sys.path:
        path = os.path.join(os.path.abspath(entry or os.curdir), "cupy", "__init__.py")
        if os.path.abspath(entry or os.curdir) != DOUBLE_ROOT and os.path.isfile(path):
            return path
    raise ImportError("the CuPy test double checks itself against the real CuPy, which is not "
                      "installed: pip install 'cupy-cuda13x>=14' (it imports without a GPU)")


def ask_real_cupy(request: dict) -> dict:
    """Run ``real_cupy.py`` on ``request`` in a process without the double."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in env.get("PYTHONPATH", "").split(os.pathsep)
        if p and os.path.abspath(p) != DOUBLE_ROOT)
    done = subprocess.run([sys.executable, HELPER], input=json.dumps(request), env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise ImportError(f"the real CuPy could not answer {request['do']!r}:\n"
                          f"{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def cache_path(kind: str, key: str) -> str:
    init = _real_cupy_init()
    stat = os.stat(init)
    digest = hashlib.sha256(f"{init} {stat.st_mtime_ns} {stat.st_size} {key}".encode())
    with open(HELPER, "rb") as f:
        digest.update(f.read())
    return os.path.join(tempfile.gettempdir(), f"gpunet-cupy-double-{kind}-"
                                               f"{digest.hexdigest()[:20]}.json")


def cached(kind: str, key: str, request: dict) -> dict:
    path = cache_path(kind, key)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    answer = ask_real_cupy(request)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(answer, f)
    os.replace(tmp, path)
    return answer


MANIFEST = cached("manifest", sys.executable, {"do": "manifest"})
NAMESPACES = MANIFEST["namespaces"]


def offered(namespace: str, name: str) -> bool:
    return name in NAMESPACES[namespace]


def signature(namespace: str, name: str) -> dict | None:
    entry = NAMESPACES[namespace].get(name)
    return entry and entry.get("signature")


def check_call(namespace: str, name: str, args: tuple, kwargs: dict) -> None:
    """``TypeError`` for what the real function's signature would refuse."""
    sig = signature(namespace, name)
    if sig is None:
        return
    where = f"{namespace}.{name}()".replace("cupy.ndarray.", "cupy.ndarray.")
    if not sig["var_keyword"]:
        for key in kwargs:
            if key not in sig["names"]:
                raise TypeError(f"{where} got an unexpected keyword argument {key!r} (the real "
                                f"CuPy takes {', '.join(sig['names'])})")
    if not sig["var_positional"] and len(args) > len(sig["positional"]):
        raise TypeError(f"{where} takes at most {len(sig['positional'])} positional "
                        f"arguments, got {len(args)}")
