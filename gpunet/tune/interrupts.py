"""Ctrl-C in a tuning worker, raised only where the trial it stops can be recorded.

A KeyboardInterrupt that lands inside Optuna's own bookkeeping (``study.ask``, the
``tell`` that writes a trial's state, the heartbeat thread's start and join, a user
attribute's write) leaves the trial RUNNING, FAILed as if on its own, or breaks
``optuna.study._optimize._run_trial`` itself ("Should not reach", an unbound
``updated_state``); one that lands in a weakref callback or ``__del__`` is printed as
"Exception ignored" and lost, and the study runs on. So a worker takes SIGINT itself:
inside training (:meth:`Interrupts.live`) it raises at once, as Python would, and the
objective records the trial as interrupted; anywhere else it is remembered and raised
at the next safe point (:meth:`Interrupts.check`: the start of training, an epoch's
end, a trial's end).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Interrupts:
    def __init__(self):
        self.pending = False  # a SIGINT came: stop at the next safe point
        self.raise_at_once = False

    def handle(self, signum, frame) -> None:
        self.pending = True
        if self.raise_at_once:
            self.raise_at_once = False  # once: a second Ctrl-C must not cut the first's cleanup
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise the KeyboardInterrupt a SIGINT asked for and nothing has raised yet (or
        something swallowed)."""
        if self.pending:
            self.raise_at_once = False
            raise KeyboardInterrupt

    @contextmanager
    def live(self):
        """Training: a SIGINT raises at once."""
        self.check()
        self.raise_at_once = True
        try:
            yield
        finally:
            self.raise_at_once = False

    @contextmanager
    def held(self):
        """Optuna's writes inside training (an epoch's report): a SIGINT waits for them."""
        was, self.raise_at_once = self.raise_at_once, False
        try:
            yield
        finally:
            self.raise_at_once = was
        self.check()

    @contextmanager
    def installed(self):
        """This handler for SIGINT while the worker runs; none where SIGINT cannot come
        (a thread other than the main one) or is ignored (a background job)."""
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
            yield self
            return
        previous = signal.signal(signal.SIGINT, self.handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
