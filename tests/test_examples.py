"""The examples run and say what they claim."""
import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def test_gradient_checking_example():
    out = subprocess.run([sys.executable, str(EXAMPLES / "gradient_checking.py")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert ": great" in out.stdout and ": bug" in out.stdout
    assert "worst array: 5.weight" in out.stdout
