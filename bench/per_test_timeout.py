"""A pytest plugin: ``--per-test-timeout S`` fails a test that runs longer than S
seconds (SIGALRM in the main thread), so that one hung test cannot eat a short
GPU slot. Loaded by bench/gpu_check.py with ``-p per_test_timeout``."""
import signal

import pytest


def pytest_addoption(parser):
    parser.addoption("--per-test-timeout", type=float, default=0,
                     help="fail a test after this many seconds (0: no limit)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    seconds = item.config.getoption("--per-test-timeout")
    if not seconds:
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"{item.nodeid} ran longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
