"""The shape of the code (issue 16): each op's textbook path fits one screen in
gpunet/ops/, and nothing but ops/ (and the thread count's readers) reaches the CPU
accelerators and their threads."""
import ast
import inspect
import pathlib

import pytest

from gpunet.ops import batchnorm, conv2d, pool2d

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gpunet"
SCREEN = 60  # lines


def _imports(path: pathlib.Path) -> set[str]:
    """Every module a file imports, relative imports resolved against gpunet."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
    return found


@pytest.mark.parametrize("where", ["nn", "losses.py", "optim", "models", "train.py",
                                   "gradcheck.py", "io.py", "data"])
def test_layers_losses_and_optimizers_never_import_the_cpu_accelerators(where):
    root = PACKAGE / where
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    for path in files:
        reached = {m for m in _imports(path) if m.startswith("gpunet.cpu")
                   or m in ("threadpoolctl", "concurrent.futures", "threading")}
        assert not reached, f"{path.relative_to(PACKAGE)} imports {sorted(reached)}"


@pytest.mark.parametrize("module,parts", [
    (conv2d, ["im2col", "col2im", "Im2colContext"]),
    (pool2d, ["_pool2d_forward", "PoolContext"]),
    (batchnorm, ["_forward", "_backward", "BatchNormContext"]),
])
def test_each_ops_textbook_path_fits_one_screen(module, parts):
    lines = sum(len(inspect.getsource(getattr(module, name)).splitlines()) for name in parts)
    assert lines <= SCREEN, f"{module.__name__}: the textbook path is {lines} lines"


# -- the import graph (issue 27): a tree, with the leaves and the top where STYLE.md puts them --
MAX_LINES = 450


def _module_name(path: pathlib.Path, package: pathlib.Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(root: pathlib.Path = PACKAGE) -> dict[str, dict[str, str]]:
    """``{module: {imported module: "file:line"}}`` for every module of the package
    at ``root`` (gpunet), lazy (in-function) imports included. An import names the deepest module it
    reaches (``from ..ops.common import Context`` is ``gpunet.ops.common``); a
    module's own enclosing packages do not count (their ``__init__`` runs first
    whatever the module does)."""
    files = {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != module and not module.startswith(target + "."):
                    edges.setdefault(target, f"{path.relative_to(root.parent)}:{node.lineno}")
        graph[module] = edges
    return graph


def _circles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def _offenders(importers, imported) -> list[str]:
    """``"file:line imports module"`` for each import from a module ``importers``
    accepts of a module ``imported`` accepts."""
    return [f"{where} imports {target}"
            for module, edges in sorted(_import_graph().items()) if importers(module)
            for target, where in sorted(edges.items()) if imported(target)]


def _in(*packages):
    return lambda module: any(module == p or module.startswith(p + ".") for p in packages)


def test_the_import_graph_finds_lazy_relative_and_absolute_imports(tmp_path):
    """The checks below are only as good as the graph they read: each way of
    importing that gpunet uses gives an edge to the deepest module, at its line."""
    files = {
        "__init__.py": "from . import a\n",
        "a.py": "import numpy\nfrom .sub.b import name\n",
        "sub/__init__.py": "",
        "sub/b.py": "from .. import a, sub\n\n\ndef lazy():\n    import pkg.c\n",
        "c.py": "from pkg.sub import b\nfrom pkg import a as alias\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    assert _import_graph(tmp_path / "pkg") == {
        "pkg": {"pkg.a": "pkg/__init__.py:1"},
        "pkg.a": {"pkg.sub.b": "pkg/a.py:2"},  # numpy is not the package's
        "pkg.c": {"pkg.sub.b": "pkg/c.py:1", "pkg.sub": "pkg/c.py:1", "pkg.a": "pkg/c.py:2"},
        "pkg.sub": {},
        "pkg.sub.b": {"pkg.a": "pkg/sub/b.py:1", "pkg.c": "pkg/sub/b.py:5"},  # pkg.sub encloses b
    }
    assert _circles({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {"a": ""}}) \
        == [["a", "b", "c"]]
    assert _circles({"a": {"b": ""}, "b": {}}) == []


def test_no_two_modules_import_each_other_lazily_or_not():
    graph = _import_graph()
    circles = [", ".join(f"{graph[a][b]} imports {b}" for a in circle for b in graph[a]
                         if b in circle) for circle in _circles(graph)]
    assert not circles, "import circles:\n  " + "\n  ".join(circles)


def test_the_cpu_and_cuda_backends_never_import_ops():
    """cpu/ and cuda/ are leaves: what they share with ops/ lives on the ground floor."""
    offenders = _offenders(_in("gpunet.cpu", "gpunet.cuda"), _in("gpunet.ops"))
    assert not offenders, "backends importing ops:\n  " + "\n  ".join(offenders)


def test_the_library_never_imports_the_cli():
    """The CLI maps flags to a library call and prints; nothing but its own entry
    point (``python -m gpunet``) imports it."""
    offenders = _offenders(lambda m: not _in("gpunet.cli", "gpunet.__main__")(m),
                           _in("gpunet.cli"))
    assert not offenders, "library modules importing the CLI:\n  " + "\n  ".join(offenders)


def test_nn_never_imports_distributed():
    """Layers know nothing of MPI: SyncBatchNorm's reductions and the global batch's
    dropout rows come from outside nn/."""
    offenders = _offenders(_in("gpunet.nn"), _in("gpunet.distributed"))
    assert not offenders, "nn/ importing distributed:\n  " + "\n  ".join(offenders)


def test_no_module_in_gpunet_is_over_450_lines():
    sizes = {path.relative_to(PACKAGE.parent): len(path.read_text().splitlines())
             for path in sorted(PACKAGE.rglob("*.py"))}
    over = [f"{path}: {lines} lines" for path, lines in sizes.items() if lines > MAX_LINES]
    assert sizes and not over, f"modules over {MAX_LINES} lines:\n  " + "\n  ".join(over)


# gpunet's floors, ground first: a module imports its own floor's and those below,
# never one above (STYLE.md: data flows one way, CLI -> fit -> nn -> ops -> backends)
FLOORS = [
    ["_checks", "config", "_process_group"],
    ["backend", "_context"],
    ["cpu", "cuda", "data", "init"],
    ["ops"],
    ["nn", "losses"],
    ["optim", "models", "io", "gradcheck", "distributed", "history"],
    ["callbacks", "data_parallel"],
    ["train"],
    ["recipe", "benchmarks"],
    ["tune"],
    ["cli"],
    ["__main__", ""],  # "": the package's __init__
]


def test_no_module_imports_one_on_a_higher_floor():
    floor = {name: level for level, names in enumerate(FLOORS) for name in names}

    def level(module):
        return floor[module.split(".")[1] if "." in module else ""]

    graph = _import_graph()
    unplaced = sorted({m.split(".")[1] for m in graph if "." in m} - set(floor))
    assert not unplaced, f"modules on no floor of FLOORS: {unplaced}"
    upward = [f"{where} imports {target}" for module, edges in sorted(graph.items())
              for target, where in sorted(edges.items()) if level(target) > level(module)]
    assert not upward, "imports of a higher floor:\n  " + "\n  ".join(upward)
