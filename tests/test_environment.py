"""The GPUNET_* variables: one rule for every boolean (each spelling, or a one-line
error naming the variable), integers read when used rather than at import, and a bad
value met by the CLI and by a fresh process in one line."""
import os
import subprocess
import sys

import pytest

from gpunet import cli, config

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
    from gpunet.cpu import parallel
    monkeypatch.setenv("GPUNET_NUM_THREADS", " 3 ")
    assert config.get("num_threads") == 3
    monkeypatch.setenv("GPUNET_NUM_THREADS", "")
    assert config.get("num_threads") is None
    monkeypatch.setenv("GPUNET_NUM_THREADS", "2.5")
    with pytest.raises(ValueError, match=r"^GPUNET_NUM_THREADS: expected an integer >= 1, "
                                         r"got '2.5'$"):
        config.check_environment()
    with pytest.raises(ValueError, match="GPUNET_NUM_THREADS"):
        parallel._default_threads()


FLAGS = sorted(v.name for v in config.VARIABLES.values() if v.kind == "flag")


@pytest.mark.parametrize("name", FLAGS)
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
    env["GPUNET_KEEP_FREED_MEMORY"] = "maybe"  # read by fit and the CLI, not at import
    done = subprocess.run([sys.executable, "-c", "import gpunet"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stderr == ""
