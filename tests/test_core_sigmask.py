"""block_signals / restore_signals, native and pure: the signal masks around
the client's critical sections."""

from __future__ import annotations

import os
import signal
import sys
import threading

import pytest

from fastjob import _io

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not hasattr(signal, "pthread_sigmask"), reason="POSIX masks"
)


class Boom(Exception):
    pass


def _mask() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


@pytest.mark.parametrize("start", [set(), {signal.SIGUSR2}])
def test_block_then_restore_puts_the_mask_back(start: set[int]) -> None:
    before = signal.pthread_sigmask(signal.SIG_SETMASK, start)
    try:
        old = _io.block_signals()
        inside = _mask()
        _io.restore_signals(old)
        assert signal.SIGINT in inside and signal.SIGALRM in inside
        assert _mask() == start
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def test_a_signal_inside_runs_its_handler_at_restore() -> None:
    """A handler that raises cannot run inside the critical section: the
    signal waits, and its exception comes out of restore_signals."""
    ran: list[str] = []

    def handler(signum: int, frame: object) -> None:
        ran.append("handler")
        raise Boom

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        old = _io.block_signals()
        # to this thread (a process-directed signal may go to any thread
        # that does not block it: pytest-timeout's has a Python thread)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
        ran.append("critical section")  # the handler has not run yet
        with pytest.raises(Boom):
            _io.restore_signals(old)
        assert ran == ["critical section", "handler"]
        assert signal.SIGUSR1 not in _mask()
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_other_threads_are_left_alone() -> None:
    out: list[object] = []
    th = threading.Thread(target=lambda: out.append(_io.block_signals()))
    th.start()
    th.join()
    assert out == [None]  # only the main thread runs Python handlers
