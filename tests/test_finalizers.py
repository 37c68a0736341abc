"""Token finalizers run by the garbage collector, at any allocation.

The collector runs finalizers wherever an allocation crosses its threshold:
inside a take, inside a section that holds the FIFO's lock, on the very
thread that holds it.  And a signal handler that raises can do so at the
very start of a pure finalizer, before any of its code runs.  None of this
may lose a token, duplicate one, or hang.

Run on native and pure (FASTJOB_NO_EXTENSIONS=1); the pure-only cases say so.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from typing import Any, Iterator

import pytest

import fastjob

from conftest import backend_with_uvloop as anyio_backend  # noqa: F401 - asyncio, uvloop, trio
from conftest import clean_env

pure_only = pytest.mark.skipif(fastjob.NATIVE, reason="the pure core's inbox and finalizer")


class _Cycle:
    """A garbage cycle that keeps a token alive until the collector runs."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.me = self


def _collect_at_the_next_allocation() -> None:
    """Arm the collector to run at the next allocation of a tracked object
    (the caller disabled it while it built its garbage)."""
    gc.set_threshold(1)
    gc.enable()


@pytest.fixture
def collector_restored() -> Iterator[None]:
    old = gc.get_threshold()
    gc.collect()
    try:
        yield
    finally:
        gc.enable()
        gc.set_threshold(*old)
        gc.collect()


@pure_only
@pytest.mark.filterwarnings("ignore::fastjob.TokenLeakWarning")
@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_a_finalizer_inside_a_take_never_doubles_the_inbox_byte(
    style: str, collector_restored: None
) -> None:
    """A handler raised right after a read: its byte waits in the inbox.
    The next take hands it out; a dropped token's finalizer, run by the
    collector at that take's first allocation, gives the inbox back.  One
    of the two may have the byte, never both: the old take looked at the
    inbox, then allocated, and both had it (3 bytes in a pool of 2)."""
    import weakref

    with fastjob.Server(4, style=style) as s:
        c = s.client
        implicit = c.try_acquire()
        dropped = c.try_acquire()
        kept = c.try_acquire()
        core = c._core
        take = core.take
        core._inbox.append(os.read(core.rfd, 1))  # (as the read left it when a handler raised)
        assert s.available() == 0
        gc.disable()
        _Cycle(dropped)
        alive = weakref.ref(dropped)
        del dropped
        _collect_at_the_next_allocation()
        got = take()
        assert alive() is None, "the collector did not run inside the take: the test proves nothing"
        tokens = [t for t in (got, kept, implicit) if t is not None]
        held = c.statistics().tokens_held
        for t in tokens:
            t.release()
        assert held == len(tokens)
        assert s.available() == 3, "a byte was handed out and given back"
        assert c.statistics().tokens_held == 0


@pytest.mark.filterwarnings("ignore::fastjob.TokenLeakWarning")
def test_a_finalizer_on_the_thread_that_holds_the_fifo_lock_does_not_hang() -> None:
    """The FIFO writes under its transport's lock; a dropped token's
    finalizer, run on the thread that holds the lock (the collector runs at
    any allocation), writes through it too.  With a plain lock the process
    hung for good."""
    code = textwrap.dedent(
        """
        import gc, warnings
        import fastjob
        warnings.simplefilter("ignore", fastjob.TokenLeakWarning)
        class Cycle:
            def __init__(self, tok):
                self.tok, self.me = tok, self
        with fastjob.Server(3, style="fifo") as s:
            c = s.client
            implicit, tok = c.try_acquire(), c.try_acquire()
            Cycle(tok)
            del tok
            with c._t._lock:
                gc.collect()  # the finalizer releases here
            implicit.release()
            print(s.available(), c.statistics().tokens_held)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "0"]


class _Raised(Exception):
    pass


def _raising_finalizer() -> Any:
    """A pure _HeldToken.__del__ that raises at once: what a signal handler
    raising at the finalizer's first instruction does."""
    from fastjob import _io_py

    def boom(self: object) -> None:
        raise _Raised

    return _io_py._HeldToken, boom


@pure_only
@pytest.mark.parametrize("how", ["refcount", "cycle"])
def test_an_implicit_token_whose_finalizer_raised_at_once_is_not_lost(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    held_cls, boom = _raising_finalizer()
    with fastjob.Server(2) as s:
        c = s.client
        tok = c.try_acquire()
        assert tok is not None and tok.implicit
        monkeypatch.setattr(held_cls, "__del__", boom)
        # (the default hook prints and lets go; pytest's keeps the traceback,
        # and the token with it)
        monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
        if how == "cycle":
            _Cycle(tok)
        del tok
        gc.collect()
        monkeypatch.undo()
        st = c.statistics()
        assert not st.implicit_held and st.tokens_held == 0
        again = c.try_acquire()
        assert again is not None and again.implicit
        second = c.try_acquire()
        assert second is not None and not second.implicit  # the pool's one: no second implicit
        assert c.try_acquire() is None
        again.release()
        second.release()


@pytest.mark.filterwarnings("ignore::fastjob.TokenLeakWarning")
@pytest.mark.parametrize("how", ["refcount", "cycle"])
def test_a_dropped_implicit_token_comes_back_once(how: str) -> None:
    """The finalizer releases it and (pure) the second watch sees its
    death too: the slot must come back once, not twice."""
    with fastjob.Server(2) as s:
        c = s.client
        tok = c.try_acquire()
        assert tok is not None and tok.implicit
        if how == "cycle":
            _Cycle(tok)
        del tok
        gc.collect()
        got = [c.try_acquire() for _ in range(3)]
        kinds = [None if t is None else t.implicit for t in got]
        assert kinds == [True, False, None]
        for t in got:
            if t is not None:
                t.release()
        assert c.statistics().tokens_held == 0


def test_a_released_token_is_a_plain_token() -> None:
    """isinstance holds for held and released tokens alike (pure: a held
    token is of a subclass that carries the leak check)."""
    with fastjob.Server(2) as s:
        c = s.client
        toks = [c.try_acquire(), c.try_acquire()]
        assert all(isinstance(t, fastjob.Token) for t in toks)
        for t in toks:
            assert t is not None
            t.release()
            assert isinstance(t, fastjob.Token) and t.released
            t.release()  # idempotent


def _kill_with_raising_finalizer(tok: Any) -> None:
    """Drop tok (the last reference) as if a signal handler raised at its
    finalizer's first instruction."""
    import weakref

    held_cls, boom = _raising_finalizer()
    hook, fin = sys.unraisablehook, held_cls.__del__
    sys.unraisablehook = lambda unraisable: None
    held_cls.__del__ = boom
    try:
        ref = weakref.ref(tok)
        del tok
    finally:
        held_cls.__del__ = fin
        sys.unraisablehook = hook
    assert ref() is None, "the caller still holds the token"


@pure_only
@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore::fastjob.TokenLeakWarning")
@pytest.mark.parametrize("which", ["byte", "implicit"])
@pytest.mark.parametrize("style", ["pipe", "fifo"])
async def test_a_queued_task_is_served_the_slot_of_a_token_whose_finalizer_raised(
    style: str, which: str
) -> None:
    """Nothing calls into the client after the death: the waiter asleep on
    the pool is served anyway (the reaper thread gives the slot back)."""
    import anyio

    with fastjob.Server(2, style=style) as s:
        c = s.client
        held = {"implicit": c.try_acquire(), "byte": c.try_acquire()}
        got: list[Any] = []

        async def wait() -> None:
            got.append(await c.acquire())

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            with anyio.fail_after(5):
                while c.statistics().tasks_waiting != 1:
                    await anyio.sleep(0.005)
            _kill_with_raising_finalizer(held.pop(which))
            with anyio.fail_after(5):
                while not got:
                    await anyio.sleep(0.005)
        assert got[0].implicit == (which == "implicit")
        got[0].release()
        for t in held.values():
            assert t is not None
            t.release()
        st = c.statistics()
        assert (s.available(), st.tokens_held, st.implicit_held) == (1, 0, False)


@pure_only
@pytest.mark.filterwarnings("ignore::fastjob.TokenLeakWarning")
@pytest.mark.parametrize("which", ["byte", "implicit"])
@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_a_blocked_thread_is_served_the_slot_of_a_token_whose_finalizer_raised(
    style: str, which: str
) -> None:
    import threading

    with fastjob.Server(2, style=style) as s:
        c = s.client
        held = {"implicit": c.try_acquire(), "byte": c.try_acquire()}
        got: list[Any] = []
        th = threading.Thread(target=lambda: got.append(c.acquire_blocking(timeout=10)))
        th.start()
        while c.statistics().tasks_waiting != 1 and th.is_alive():
            th.join(0.005)
        _kill_with_raising_finalizer(held.pop(which))
        th.join(5)
        assert got and got[0].implicit == (which == "implicit")
        got[0].release()
        for t in held.values():
            assert t is not None
            t.release()
        assert (s.available(), c.statistics().tokens_held) == (1, 0)


@pure_only
@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_has_a_reaper_of_its_own() -> None:
    code = textwrap.dedent(
        """
        import os, sys, threading, warnings
        import fastjob
        sys.path.insert(0, sys.argv[1])
        from test_finalizers import _kill_with_raising_finalizer
        warnings.simplefilter("ignore", fastjob.TokenLeakWarning)
        with fastjob.Server(2) as s:
            pass  # the parent's reaper runs now
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                with fastjob.Server(2) as s:
                    c = s.client
                    implicit, toks = c.try_acquire(), [c.try_acquire()]
                    got = []
                    th = threading.Thread(target=lambda: got.append(c.acquire_blocking(timeout=10)))
                    th.start()
                    while c.statistics().tasks_waiting != 1 and th.is_alive():
                        th.join(0.005)
                    _kill_with_raising_finalizer(toks.pop())
                    th.join(5)
                    ok = bool(got) and not got[0].implicit
                    for t in got + [implicit]:
                        t.release()
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", code, here], env=clean_env(), capture_output=True, text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0"], out.stderr


@pure_only
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux /proc")
def test_the_reaper_thread_blocks_every_signal() -> None:
    """A signal the kernel gave the reaper would have the main thread run
    its handler inside a critical section (whose mask is the main thread's
    only): the reaper takes none."""
    import threading

    with fastjob.Server(2):
        reaper = [t for t in threading.enumerate() if t.name == "fastjob-reaper"]
        assert len(reaper) == 1 and reaper[0].native_id is not None
        with open(f"/proc/self/task/{reaper[0].native_id}/status") as f:
            blocked = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
    import signal

    for sig in (signal.SIGINT, signal.SIGALRM, signal.SIGTERM, signal.SIGUSR1, signal.SIGCHLD):
        assert blocked & (1 << (sig - 1)), sig
