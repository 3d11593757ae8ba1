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


@pytest.mark.parametrize("where,above", [("cpu", "gpunet.ops"), ("cuda", "gpunet.ops"),
                                         ("nn", "gpunet.distributed")])
def test_the_lower_floors_never_import_the_upper_ones(where, above):
    """The accelerators are leaves: what they share with ops/ is on the ground floor
    (gpunet._context). Layers reach the collectives of a distributed job through
    gpunet._process_group, never through distributed. Lazy imports count too."""
    for path in sorted((PACKAGE / where).rglob("*.py")):
        reached = {m for m in _imports(path) if m == above or m.startswith(f"{above}.")}
        assert not reached, f"{path.relative_to(PACKAGE)} imports {sorted(reached)}"
