"""The GPUNET_* variables: one rule for every boolean (each spelling, or a one-line
error naming the variable), integers read when used rather than at import, and a bad
value met by the CLI and by a fresh process in one line."""
import os
import subprocess
import sys

import pytest

import gpunet
from gpunet import _checks, cli

from .helpers import gpunet_cli, one_gpunet_line, only_error_line


@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_bad_num_threads_leaves_help_working_and_commands_fail_in_one_line(value):
    env = {"GPUNET_NUM_THREADS": value}
    done = gpunet_cli("--help", env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    done = gpunet_cli("summary", "lenet5", env=env)
    assert done.returncode == 2
    assert only_error_line(done) == (
        f"gpunet: error: GPUNET_NUM_THREADS: expected an integer >= 1, got {value!r}")


def test_integer_variables_are_read_when_used_not_at_import(monkeypatch):
    from gpunet import _checks
    from gpunet.cpu import parallel
    monkeypatch.setenv("GPUNET_NUM_THREADS", " 3 ")
    assert _checks.env_int("GPUNET_NUM_THREADS") == 3
    monkeypatch.setenv("GPUNET_NUM_THREADS", "")
    assert _checks.env_int("GPUNET_NUM_THREADS", 7) == 7
    monkeypatch.setenv("GPUNET_NUM_THREADS", "2.5")
    with pytest.raises(ValueError, match=r"^GPUNET_NUM_THREADS: expected an integer >= 1, "
                                         r"got '2.5'$"):
        _checks.check_environment()
    with pytest.raises(ValueError, match="GPUNET_NUM_THREADS"):
        parallel._default_threads()


@pytest.mark.parametrize("name", sorted(_checks.BOOLEAN_VARIABLES))
def test_every_boolean_variable_takes_every_spelling_or_names_itself(name, monkeypatch):
    for words, value in ((("1", "true", "TRUE", "yes", "Yes", "on", " ON "), True),
                         (("0", "false", "False", "no", "NO", "off", "Off"), False)):
        for word in words:
            monkeypatch.setenv(name, word)
            assert _checks.env_flag(name) is value, (name, word)
    monkeypatch.setenv(name, "")
    assert _checks.env_flag(name) is _checks.BOOLEAN_VARIABLES[name]
    monkeypatch.setenv(name, "maybe")
    with pytest.raises(ValueError, match=f"^{name}: expected 1/0, true/false, yes/no or "
                                         "on/off, got 'maybe'$"):
        _checks.env_flag(name)


def test_every_boolean_variable_in_gpunet_is_read_through_env_flag():
    """No other reading of a GPUNET_* flag is left (``== "1"`` took ``true`` as off)."""
    root = os.path.dirname(gpunet.__file__)
    for folder, _, files in os.walk(root):
        for file in (f for f in files if f.endswith(".py")):
            text = open(os.path.join(folder, file)).read()
            for name in _checks.BOOLEAN_VARIABLES:
                assert f'environ.get("{name}"' not in text, (file, name)


@pytest.mark.parametrize("name", sorted(_checks.BOOLEAN_VARIABLES))
def test_cli_refuses_a_bad_boolean_variable_in_one_line(name, monkeypatch, capsys):
    monkeypatch.setenv(name, "maybe")
    assert cli.main(["summary", "lenet5"]) == 2
    assert one_gpunet_line(capsys.readouterr().err) == (
        f"gpunet: error: {name}: expected 1/0, true/false, yes/no or on/off, got 'maybe'")


def test_true_and_off_are_taken_in_a_fresh_process():
    env = dict(os.environ, GPUNET_ALLOW_TF32="true", GPUNET_KERNELS="Off",
               GPUNET_CPU_ACCEL="no", GPUNET_DEVICE="cpu")
    code = ("from gpunet import cuda, ops; print(cuda.allow_tf32(), cuda.kernels_enabled(), "
            "ops.cpu_accelerators_enabled())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "False"]
    env["GPUNET_KEEP_FREED_MEMORY"] = "maybe"  # read at import: a warning, not a traceback
    done = subprocess.run([sys.executable, "-c", "import gpunet"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0 and "GPUNET_KEEP_FREED_MEMORY: expected" in done.stderr
