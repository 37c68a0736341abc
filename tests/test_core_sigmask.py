"""block_signals / restore_signals, native and pure: the signal masks around
the client's critical sections."""

from __future__ import annotations

import os
import signal
import subprocess
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
        level = _io.signal_level()
        assert level == 0
        try:
            _io.block_signals()
            inside = _mask()
            assert _io.signal_level() == 1
        finally:
            _io.restore_signals(level)
        assert signal.SIGINT in inside and signal.SIGALRM in inside
        assert _mask() == start
        assert _io.signal_level() == 0
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def test_nested_sections_unblock_at_the_outermost_end() -> None:
    outer = _io.signal_level()
    try:
        _io.block_signals()
        inner = _io.signal_level()
        try:
            _io.block_signals()
            assert _io.signal_level() == 2
        finally:
            _io.restore_signals(inner)
        assert signal.SIGINT in _mask(), "the inner end unblocked the outer section"
    finally:
        _io.restore_signals(outer)
    assert _mask() == set()


def test_a_signal_inside_runs_its_handler_at_restore() -> None:
    """A handler that raises cannot run inside the critical section: the
    signal waits, and its exception comes out of restore_signals."""
    ran: list[str] = []

    def handler(signum: int, frame: object) -> None:
        ran.append("handler")
        raise Boom

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        level = _io.signal_level()
        with pytest.raises(Boom):
            try:
                _io.block_signals()
                # to this thread (a process-directed signal may go to any
                # thread that does not block it: pytest-timeout's has a
                # Python thread)
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
                ran.append("critical section")  # the handler has not run yet
            finally:
                _io.restore_signals(level)
        assert ran == ["critical section", "handler"]
        assert signal.SIGUSR1 not in _mask()
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_restore_to_a_level_mends_a_lost_depth() -> None:
    """A section whose end never ran (its frame was torn down some other
    way) does not leave the depth counted: the next outermost end puts the
    mask back all the same."""
    level = _io.signal_level()
    _io.block_signals()
    _io.block_signals()  # an inner section that never ends
    try:
        _io.block_signals()
    finally:
        _io.restore_signals(level)
    assert _mask() == set() and _io.signal_level() == 0


def test_other_threads_are_left_alone() -> None:
    out: list[object] = []

    def other() -> None:
        level = _io.signal_level()
        _io.block_signals()
        out.append((level, _io.signal_level(), _mask()))
        _io.restore_signals(level)

    th = threading.Thread(target=other)
    th.start()
    th.join()
    assert out == [(0, 0, set())]  # only the main thread runs Python handlers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
def test_every_thread_fastjob_starts_blocks_every_signal() -> None:
    """A process signal may go to any thread that does not block it, and
    Python then runs the handler in the main thread even inside a masked
    critical section: fastjob's own threads (reader, resize settle,
    governor, control socket) must block them all."""
    code = r"""
import os, sys, threading, time
import fastjob

def blocked(tid):
    for line in open(f"/proc/self/task/{tid}/status"):
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigBlk")

main = threading.get_native_id()
before = {int(t) for t in os.listdir("/proc/self/task")}
server = fastjob.Server(4, limits=fastjob.Limits(load_average=10_000))
held = [server.client.try_acquire() for _ in range(4)]
server.resize(2)                       # owed: the settle thread waits for returns
os.environ["FASTJOB_WAIT_STRATEGY"] = "thread"
reader_client = fastjob.from_env(server.env(), strict=True)
reader_client.try_acquire_up_to(1)     # starts nothing yet on an empty pool...
t = threading.Thread(target=lambda: reader_client.acquire_blocking(timeout=0.5) and None)
t.start()                              # ...a waiter makes the reader thread run
server.serve_control()                 # the control socket's thread
time.sleep(0.3)
ours = {int(x) for x in os.listdir("/proc/self/task")} - before - {t.native_id}
masks = {tid: blocked(tid) for tid in ours}
print(len(masks), " ".join(f"{m:x}" for m in masks.values()))
t.join()
for tok in held:
    if tok is not None:
        tok.release()
reader_client.close()
server.close()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    count, *masks = r.stdout.split()
    assert int(count) >= 4, r.stdout  # governor, settle, control and reader threads
    for m in masks:
        # every signal Linux has up to SIGRTMAX (glibc keeps 32/33 for itself)
        assert int(m, 16) | 0x180000000 >= 0xFFFFFFFE7FFFFFFF, r.stdout


@pytest.mark.skipif(_io.NATIVE, reason="pure: the native end runs no Python code, so none is skipped")
def test_a_skipped_section_end_is_mended_at_the_next_start() -> None:
    """Pure: a handler raising at restore_signals' first instruction skips
    a section's end.  Once that section's frame is gone, the next section's
    signal_level() puts the mask back."""

    def section_whose_end_was_skipped() -> None:
        _io.block_signals()  # (its restore_signals never ran)

    section_whose_end_was_skipped()
    assert signal.SIGINT in _mask()
    assert _io.signal_level() == 0
    assert _mask() == set()
