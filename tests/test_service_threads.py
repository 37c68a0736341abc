"""Every thread fastjob starts blocks every signal from its first instruction.

A process-directed signal goes to any thread that does not block it, and
CPython then runs the Python handler in the main thread, even inside a
critical section whose mask is only the main thread's.  A thread that blocks
signals only once its code runs leaves a window for that at every start.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import fastjob
from fastjob._service_thread import start_service_thread

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "pthread_sigmask"), reason="no signal masks (Windows)"
)

# the signals whose handlers a test or a user typically installs
WATCHED = {signal.SIGINT, signal.SIGALRM, signal.SIGTERM, signal.SIGUSR1, signal.SIGCHLD, signal.SIGHUP}


def _mask() -> set[signal.Signals]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, ()))


def test_a_service_thread_blocks_every_signal_at_its_first_instruction() -> None:
    seen: list[set[signal.Signals]] = []
    t = threading.Thread(target=lambda: seen.append(_mask()))
    before = _mask()
    start_service_thread(t)
    t.join(10)
    assert WATCHED <= seen[0]
    assert _mask() == before  # the starter's own mask is unchanged


def test_the_starters_mask_survives_a_failed_start() -> None:
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join(10)
    before = _mask()
    with pytest.raises(RuntimeError):
        start_service_thread(t)  # threads can only be started once
    assert _mask() == before


@pytest.fixture
def start_masks(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, set[signal.Signals]]]:
    """The starting thread's mask at each Thread.start(), by thread name:
    a new thread inherits it, so it is the thread's mask at its first
    instruction."""
    seen: dict[str, set[signal.Signals]] = {}
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        seen[self.name] = _mask()
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    yield seen


def _until(check: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_every_fastjob_thread_starts_with_every_signal_blocked(
    start_masks: dict[str, set[signal.Signals]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastjob.trace import Recorder

    with fastjob.Server(4, limits=fastjob.Limits(load_average=1e6)) as s:
        s.serve_control()  # fastjob-control
        held = [s.client.try_acquire() for _ in range(3)]
        s.resize(2)  # tokens are out: fastjob-pool-size settles the shrink
        with Recorder(s, implicit=False):  # fastjob-trace-sampler
            time.sleep(0.05)
        for tok in held:
            assert tok is not None
            tok.release()
        _until(lambda: s.statistics().withheld == 2)
    monkeypatch.setenv("FASTJOB_WAIT_STRATEGY", "thread")
    with fastjob.Server(3) as s:  # (the implicit token is the Server's client's)
        c = fastjob.from_env(environ=s.env(), strict=True)
        assert c is not None
        def two() -> None:
            with c.acquire_blocking(timeout=10), c.acquire_blocking(timeout=10):
                pass  # the second one is read by fastjob-reader

        try:
            # from a thread other than the main one, whose block_signals()
            # masks nothing: the reader must be started blocked all the same
            th = threading.Thread(target=two)
            th.start()
            th.join(20)
            assert not th.is_alive()
        finally:
            c.close()
    names = {n for n in start_masks if n.startswith("fastjob-")}
    expected = {"fastjob-control", "fastjob-governor", "fastjob-pool-size",
                "fastjob-trace-sampler", "fastjob-reader"}
    assert expected <= names, names
    for name in names:
        assert WATCHED <= start_masks[name], (name, WATCHED - start_masks[name])
