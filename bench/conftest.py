"""Collects each case's median time from pytest-benchmark and prints the gpunet /
PyTorch table (the same as ``gpunet bench``) at the end of ``pytest bench/``."""
import pytest

from gpunet import benchmarks

MEDIANS = {}  # (case id, device, library) -> median seconds


@pytest.fixture
def record():
    """``record(case, device, library, benchmark)`` after a timed case."""
    return _record


def _record(case, device, library, benchmark):
    MEDIANS[case.id, device, library] = benchmark.stats.stats.median
    amount, unit = case.work()
    benchmark.extra_info["rate"] = amount / benchmark.stats.stats.median / 1e9
    benchmark.extra_info["unit"] = "GFLOP/s" if unit == "flop" else "GB/s"


def pytest_terminal_summary(terminalreporter):
    rows = []
    for case in benchmarks.CASES:
        for device in ("cpu", "cuda"):
            ours = MEDIANS.get((case.id, device, "gpunet"))
            if ours is not None:
                rows.append(benchmarks.make_row(case, device, ours,
                                                MEDIANS.get((case.id, device, "torch"))))
    if rows:
        terminalreporter.write_sep("=", "gpunet vs PyTorch (ratio = torch time / gpunet time)")
        terminalreporter.write_line(benchmarks.format_table(rows))
