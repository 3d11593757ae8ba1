"""gpunet.config (issue 27, part 4): one module reads every GPUNET_* variable, each bad
value is one line naming the variable, ``override`` is scoped, and importing gpunet
changes nothing in the process (glibc's allocator is tuned by fit and the CLI)."""
import ast
import json
import os
import pathlib
import subprocess
import sys
import threading

import numpy
import pytest

from gpunet import backend, cli, config, cuda, ops

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gpunet"
ROOT = PACKAGE.parent
VARIABLE_NAME = "GPUNET_"


def _is_environ(node) -> bool:
    """``os.environ`` or a bare ``environ`` (``from os import environ``)."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or \
        (isinstance(node, ast.Name) and node.id == "environ")


def _keys_read(node):
    """The key expressions ``node`` reads from the environment, if it reads any:
    ``environ.get(k)``, ``environ[k]``, ``k in environ``, ``getenv(k)``."""
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        if isinstance(func, ast.Attribute) and _is_environ(func.value) and \
                func.attr in ("get", "pop", "setdefault"):
            return [node.args[0]]
        if (isinstance(func, ast.Attribute) and func.attr == "getenv") or \
                (isinstance(func, ast.Name) and func.id == "getenv"):
            return [node.args[0]]
    if isinstance(node, ast.Subscript) and _is_environ(node.value) and \
            isinstance(node.ctx, ast.Load):
        return [node.slice]
    if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn))
                                             for op in node.ops) \
            and any(_is_environ(c) for c in node.comparators):
        return [node.left]
    return []


def environment_reads(package: pathlib.Path) -> list[str]:
    """Where a module of ``package`` other than config.py reads a GPUNET_* variable:
    by its name, or by a computed name in a module that spells a variable's name
    (``env_flag(name)`` over a table of them)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).as_posix() == "config.py":
            continue
        tree = ast.parse(path.read_text())
        names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                 and isinstance(n.value, str) and n.value.startswith(VARIABLE_NAME)
                 and n.value.replace("_", "").isalnum() and n.value.isupper()}
        for node in ast.walk(tree):
            for key in _keys_read(node):
                literal = isinstance(key, ast.Constant)
                if literal and str(key.value).startswith(VARIABLE_NAME) or \
                        not literal and names:
                    found.append(f"{path.relative_to(package)}:{node.lineno}")
    return found


def test_only_config_reads_gpunet_variables():
    assert environment_reads(PACKAGE) == []


def test_the_reads_scan_finds_each_way_of_reading(tmp_path):
    """The scan is not blind: each spelling of a read is caught, a child's environment
    built from os.environ and other variables are not."""
    (tmp_path / "reads.py").write_text(
        "import os\nfrom os import environ\n"
        "a = os.environ.get('GPUNET_A')\nb = os.environ['GPUNET_B']\n"
        "c = 'GPUNET_C' in os.environ\nd = os.getenv('GPUNET_D')\ne = environ.get('GPUNET_E')\n")
    (tmp_path / "table.py").write_text(
        "import os\nNAMES = ['GPUNET_F']\n"
        "def flag(name):\n    return os.environ.get(name, '')\n")
    (tmp_path / "child.py").write_text(
        "import os\nchild = {**os.environ, 'GPUNET_G': '1'}\n"
        "cache = os.environ.get('CUPY_CACHE_DIR')\n")
    (tmp_path / "computed.py").write_text(
        "import os\n\n\ndef f(name):\n"
        "    '''not GPUNET_H: that one is read by gpunet.config'''\n"
        "    return os.environ.get(name)\n")
    (tmp_path / "config.py").write_text("import os\nx = os.environ.get('GPUNET_I')\n")
    assert environment_reads(tmp_path) == [f"reads.py:{line}" for line in range(3, 8)] + \
        ["table.py:4"]


# -- each variable: its values, and one line naming it for a bad one -----------------------

BAD_VALUES = [(v.name, bad, expected) for v in config.VARIABLES.values()
              for bad, expected in {
                  "flag": [("maybe", "1/0, true/false, yes/no or on/off"),
                           ("2", "1/0, true/false, yes/no or on/off")],
                  "count": [("abc", "an integer >= 1"), ("0", "an integer >= 1"),
                            ("-1", "an integer >= 1"), ("2.5", "an integer >= 1")],
                  "device": [("tpu", "'cpu', 'cuda', 'cuda:N' or 'auto'"),
                             ("cuda:x", "'cpu', 'cuda', 'cuda:N' or 'auto'")],
                  "text": []}[v.kind]]


def _key(name: str) -> str:
    return next(k for k, v in config.VARIABLES.items() if v.name == name)


@pytest.mark.parametrize("name,bad,expected", BAD_VALUES)
def test_a_bad_value_is_one_line_naming_the_variable(name, bad, expected, monkeypatch):
    monkeypatch.setenv(name, bad)
    message = f"{name}: expected {expected}, got {bad!r}"
    for read in (lambda: config.from_environment(_key(name)), config.check_environment):
        with pytest.raises(ValueError) as caught:
            read()
        assert str(caught.value) == message


def test_every_kind_of_variable_has_a_bad_value_tested():
    kinds = {v.kind for v in config.VARIABLES.values() if v.name in {n for n, _, _ in BAD_VALUES}}
    assert kinds == {v.kind for v in config.VARIABLES.values()} - {"text"}


@pytest.mark.parametrize("name", sorted(v.name for v in config.VARIABLES.values()
                                        if v.kind == "flag"))
def test_every_flag_takes_every_spelling(name, monkeypatch):
    for words, value in ((("1", "true", "TRUE", "yes", "Yes", "on", " ON "), True),
                         (("0", "false", "False", "no", "NO", "off", "Off"), False)):
        for word in words:
            monkeypatch.setenv(name, word)
            assert config.from_environment(_key(name)) is value, (name, word)
    monkeypatch.setenv(name, " ")
    assert config.from_environment(_key(name)) is config.VARIABLES[_key(name)].default


def test_values_of_the_other_kinds(monkeypatch):
    monkeypatch.setenv("GPUNET_NUM_THREADS", " 3 ")
    monkeypatch.setenv("GPUNET_DEVICE", " CUDA:1 ")
    monkeypatch.setenv("GPUNET_DATA", "/some where")
    assert (config.get("num_threads"), config.get("device"), config.get("data")) == \
        (3, "CUDA:1", "/some where")
    for name in ("GPUNET_NUM_THREADS", "GPUNET_DEVICE", "GPUNET_DATA"):
        monkeypatch.setenv(name, "")
    assert (config.get("num_threads"), config.get("device"), config.get("data")) == \
        (None, "auto", None)
    assert not config.is_set("device")


def test_the_cli_skips_the_device_variable_where_device_replaces_it(monkeypatch):
    monkeypatch.setenv("GPUNET_DEVICE", "tpu")
    config.check_environment(skip=("device",))
    assert cli.main(["gradcheck", "lenet5", "--max-per-param", "1", "--device", "cpu"]) == 0


def test_an_unknown_setting_names_the_known_ones():
    with pytest.raises(TypeError, match="^config: expected a setting among device, kernels, "
                                        r".*got 'kernel'$"):
        config.get("kernel")
    with pytest.raises(TypeError, match="'kernel'"), config.override(kernel=False):
        pass


# -- settings given in Python ---------------------------------------------------------------


def test_override_is_scoped_and_restored_after_an_exception(monkeypatch):
    monkeypatch.setenv("GPUNET_NUM_THREADS", "3")
    before = cuda.kernels_enabled()
    with config.override(kernels=not before, num_threads=5):
        assert cuda.kernels_enabled() is (not before) and config.get("num_threads") == 5
        with config.override(kernels=before):
            assert cuda.kernels_enabled() is before
        assert cuda.kernels_enabled() is (not before)
    assert cuda.kernels_enabled() is before and config.get("num_threads") == 3
    with pytest.raises(RuntimeError, match="inside"), config.override(cpu_accel=False):
        assert ops.common.route(numpy) == "xp"
        raise RuntimeError("inside")
    assert ops.cpu_accelerators_enabled() is True and ops.common.route(numpy) == "cpu"


def test_override_wins_over_the_environment_and_over_none(monkeypatch):
    monkeypatch.setenv("GPUNET_DATA", "/from/environment")
    with config.override(data=pathlib.Path("/given")):
        assert config.get("data") == "/given"
        with config.override(data=None):  # as if unset
            assert config.get("data") is None
    assert config.get("data") == "/from/environment"


@pytest.mark.parametrize("values,message", [
    ({"kernels": 1}, "kernels: expected True or False, got 1"),
    ({"poison": "yes"}, "poison: expected True or False, got 'yes'"),
    ({"num_threads": 0}, "num_threads: expected a positive int, got 0"),
    ({"mirror": 3}, "mirror: expected a str, got 3")])
def test_values_given_in_python_are_checked(values, message):
    before = dict(config._given)
    for give in (config.update, lambda **v: config.override(**v).__enter__()):
        with pytest.raises(ValueError) as caught:
            give(**values)
        assert str(caught.value) == message
    assert config._given == before


def test_the_setters_are_settings():
    """``set_kernels_enabled`` and its siblings give the setting; an override of it
    comes back to what they gave."""
    saved = {key: config.get(key) for key in ("kernels", "cpu_accel", "allow_tf32")}
    try:
        for setter, key in ((cuda.set_kernels_enabled, "kernels"),
                            (ops.set_cpu_accelerators_enabled, "cpu_accel"),
                            (cuda.set_allow_tf32, "allow_tf32")):
            for value in (False, True):
                setter(value)
                assert config.get(key) is value
                with config.override(**{key: not value}):
                    assert config.get(key) is (not value)
                assert config.get(key) is value
        assert cuda.allow_tf32() is True and cuda.kernels_enabled() is True
        for setter in (cuda.set_kernels_enabled, cuda.set_allow_tf32,
                       ops.set_cpu_accelerators_enabled):  # the argument named, as given
            with pytest.raises(ValueError, match="^enabled: expected True or False, got 'off'$"):
                setter("off")
    finally:
        config.update(**saved)


def test_an_override_is_seen_by_other_threads():
    seen = []
    with config.override(poison=True):
        worker = threading.Thread(target=lambda: seen.append(config.get("poison")))
        worker.start()
        worker.join()
    assert seen == [True]


def test_overrides_in_threads_that_nest_restore_what_they_found():
    inside, release = threading.Event(), threading.Event()

    def hold():
        with config.override(progress=True):
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=hold)
    with config.override(traceback=True):
        worker.start()
        inside.wait(5)
        assert config.get("progress") is True and config.get("traceback") is True
        release.set()
        worker.join()
    assert "progress" not in config._given and "traceback" not in config._given


def test_overrides_of_one_setting_that_overlap_without_nesting_leave_nothing_behind():
    """Thread A's block opens, thread B's opens, A's closes, then B's: while B's is
    open its value holds, and once both are closed the setting is the environment's
    again (restoring what each block found left B's False behind)."""
    before = dict(config._given)
    a_in, b_in, a_out, b_out = (threading.Event() for _ in range(4))
    seen = {}

    def block_a():
        with config.override(kernels=False):
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def block_b():
        a_in.wait(5)
        with config.override(kernels=True):
            b_in.set()
            a_out.wait(5)
            seen["b after a left"] = config.get("kernels")
        b_out.set()

    threads = [threading.Thread(target=block_a), threading.Thread(target=block_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == {"b after a left": True}
    assert config._given == before


def test_cached_settings_keep_their_first_reading_until_reload(monkeypatch):
    """The per-op flags are read once (a lookup on every op), the others at each
    lookup; ``reload`` reads the first kind again."""
    monkeypatch.setattr(config, "_read", {})  # this test's readings go with it
    monkeypatch.setenv("GPUNET_POISON", "1")
    monkeypatch.setenv("GPUNET_PROGRESS", "1")
    assert config.get("poison") is True and config.get("progress") is True
    monkeypatch.setenv("GPUNET_POISON", "0")
    monkeypatch.setenv("GPUNET_PROGRESS", "0")
    assert config.get("poison") is True and config.get("progress") is False
    config.reload()
    assert config.get("poison") is False
    cached = {key for key, v in config.VARIABLES.items() if v.cached}
    assert cached == {"kernels", "cpu_accel", "allow_tf32", "poison"}


# -- nothing changes process state at import ----------------------------------------------

MALLOPT_CALLS = """
import json, sys
looked_up = []
sys.addaudithook(lambda event, args: looked_up.append(args[1])
                 if event == "ctypes.dlsym" and args[1] == "mallopt" else None)
import numpy, gpunet
from gpunet import cli, losses, nn, optim
after = {"import": len(looked_up)}
gpunet.set_device("cpu")
model = nn.Sequential(nn.Linear(4, 2))
x, y = numpy.ones((8, 4), "float32"), numpy.arange(8) % 2
gpunet.fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1),
           (x, y), epochs=1, batch_size=4, progress=False)
after["fit"] = len(looked_up)
assert cli.main(["summary", "lenet5"]) == 0
after["cli"] = len(looked_up)
print(json.dumps(after))
"""


@pytest.mark.skipif(backend._glibc() is None, reason="glibc's mallopt only")
@pytest.mark.parametrize("keep", ["", "0"])
def test_import_leaves_the_allocator_and_fit_and_the_cli_tune_it(keep):
    """mallopt is looked up (ctypes' audit event) each time the allocator is tuned:
    never by ``import gpunet``, once by fit and once by the CLI; not at all under
    GPUNET_KEEP_FREED_MEMORY=0."""
    env = {**os.environ, "GPUNET_KEEP_FREED_MEMORY": keep, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", MALLOPT_CALLS], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    calls = json.loads(done.stdout.strip().splitlines()[-1])
    assert calls == ({"import": 0, "fit": 0, "cli": 0} if keep == "0" else
                     {"import": 0, "fit": 1, "cli": 2})


def test_a_bad_variable_never_breaks_import():
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           **{v.name: "tpu" if v.kind == "device" else "maybe"
              for v in config.VARIABLES.values() if v.kind != "text"}}
    code = ("import gpunet\ntry:\n    gpunet.get_device()\nexcept ValueError as exc:\n"
            "    print(exc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.strip() == \
        "GPUNET_DEVICE: expected 'cpu', 'cuda', 'cuda:N' or 'auto', got 'tpu'"


@pytest.mark.parametrize("give", [config.update, config.override])
def test_the_device_is_set_by_set_device_not_by_a_setting(give):
    """The backend reads GPUNET_DEVICE once, at import (API.md): a device given to the
    configuration would reach the CLI and tune but not gpunet.get_device()."""
    with pytest.raises(ValueError, match=r"^device: not a setting to give here; call "
                                         r"gpunet\.set_device\(\.\.\.\)"):
        result = give(device="cpu")
        if give is config.override:
            with result:
                pass
    assert "device" not in config._given


def test_an_update_inside_a_block_of_the_same_setting_holds_until_the_block_ends():
    """``set_allow_tf32(False)`` inside ``override(allow_tf32=True)`` turns TF32 off at
    once (a layer must not hide it), and the block's end restores what held before."""
    before = config.get("allow_tf32")
    with config.override(allow_tf32=True):
        config.update(allow_tf32=False)
        assert config.get("allow_tf32") is False
        config.update(allow_tf32=True)
        assert config.get("allow_tf32") is True
    assert config.get("allow_tf32") is before
