"""The core's defects (issue 13, items 1-10): each test fails on the old core.

They run on whichever core this process selected (native, or pure with
FASTJOB_NO_EXTENSIONS=1); the suite runs once for each.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import anyio
import pytest

import fastjob
from fastjob import _io
from fastjob._core.transport import PipeTransport

from conftest import clean_env, with_armed_handler

POSIX_STRATEGIES = ["proc-reopen", "rwf-nowait", "thread"]


def _run(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


# -- 1. a signal handler raising at any point loses no token --------------------------
STORM = with_armed_handler(r"""
import asyncio, gc, signal, sys, time, warnings
import fastjob

# A token the *caller* drops (the handler raised between our return and its
# assignment) is garbage collected and released with this warning: not lost.
warnings.simplefilter("ignore", fastjob.TokenLeakWarning)
mode, style = sys.argv[1], sys.argv[2]

#: armed handler


def sync_storm(c, held, end):
    global armed
    n = 0
    while time.monotonic() < end:
        n += 1
        try:
            armed = True
            op = n % 4
            if op == 0:
                t = c.try_acquire()
                if t is not None:
                    held.append(t)
            elif op == 1:
                held.append(c.acquire_blocking(timeout=0.002))
            elif held:
                # (no call between taking the token from the list and its
                # release: a handler raising there would drop it unreleased,
                # in the caller's code, not ours)
                held[-1].release()
                del held[-1]
            armed = False
        except (Boom, TimeoutError):
            armed = False


async def async_storm(c, held, end):
    global armed
    n = 0
    while time.monotonic() < end:
        n += 1
        try:
            armed = True
            if len(held) < 3 and n % 2:
                held.append(await c.acquire())  # never waits: a token is free
            elif held:
                held[-1].release()
                del held[-1]
            armed = False
        except Boom:
            armed = False


with fastjob.Server(4, style=style) as s:
    c = s.client
    held = []
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    end = time.monotonic() + 1.5
    if mode == "sync":
        sync_storm(c, held, end)
    else:
        asyncio.run(async_storm(c, held, end))
    armed = False
    signal.setitimer(signal.ITIMER_REAL, 0)
    for t in held:
        t.release()
    held.clear()
    gc.collect()
    # The "thread" strategy's reader may hold a byte in flight (read for a
    # waiter that gave up, on its way back): wait for it to settle.  A lost
    # token stays lost, so this still fails then.
    reader = c._reader
    settle = time.monotonic() + 5
    while reader is not None and reader._thread is not None and time.monotonic() < settle:
        time.sleep(0.01)
    st = c.statistics()
    print(c.available(), st.tokens_held, st.implicit_held, st.tasks_waiting)
""")


@pytest.mark.parametrize(
    "mode,style,strategy",
    [
        ("sync", "pipe", "proc-reopen"),
        ("sync", "pipe", "rwf-nowait"),
        ("sync", "pipe", "thread"),
        ("sync", "fifo", ""),
        ("async", "pipe", ""),
        ("async", "fifo", ""),
    ],
)
def test_signal_storm_loses_no_token(mode: str, style: str, strategy: str) -> None:
    env = {"FASTJOB_WAIT_STRATEGY": strategy} if strategy else {}
    out = _run(STORM, mode, style, env=env)
    # (The thread strategy once ended 2 in the pool, 1 counted held, about
    # 1 run in 20, native and pure: a handler raising at the return of
    # _sweep's pop of a dead waiter left its gathered token in _gathered.)
    assert out.split() == ["3", "0", "False", "0"]


# -- 2. Ctrl-C interrupts acquire_blocking ------------------------------------------
INTERRUPT = r"""
import sys, threading, time
import fastjob

style, follower = sys.argv[1], sys.argv[2] == "follower"
with fastjob.Server(2, style=style) as s:
    c = s.client
    held = [c.try_acquire(), c.try_acquire()]
    if follower:  # another thread leads the wait; this one queues behind it
        first = threading.Thread(target=lambda: c.acquire_blocking(timeout=20).release())
        first.start()
        while c.statistics().tasks_waiting < 1:
            time.sleep(0.01)
    print("ready", flush=True)
    t0 = time.monotonic()
    try:
        c.acquire_blocking()
    except KeyboardInterrupt:
        print("interrupted", round(time.monotonic() - t0, 3), flush=True)
    for t in held:
        t.release()
    if follower:
        first.join()
    print("pool", s.available(), c.statistics().tokens_held, flush=True)
"""


@pytest.mark.parametrize("strategy", [*POSIX_STRATEGIES, "fifo"])
@pytest.mark.parametrize("role", ["leader", "follower"])
def test_ctrl_c_interrupts_acquire_blocking(strategy: str, role: str) -> None:
    style = "fifo" if strategy == "fifo" else "pipe"
    env = clean_env(FASTJOB_WAIT_STRATEGY="" if strategy == "fifo" else strategy)
    p = subprocess.Popen(
        [sys.executable, "-c", INTERRUPT, style, role],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # let it block in the wait
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)  # the old core waited forever
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("interrupted")
    assert lines[-1] == "pool 1 0"


# -- 3 and 8. a dead pool fails every present and future waiter ----------------------
@pytest.mark.parametrize("strategy", POSIX_STRATEGIES)
def test_dead_pool_fails_every_waiter(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTJOB_WAIT_STRATEGY", strategy)
    r, w = os.pipe()
    c = fastjob.Client(PipeTransport(r, w), implicit_token=False)
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            c.acquire_blocking(timeout=20)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assert
            errors.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(2)]
    for th in threads:
        th.start()
    while c.statistics().tasks_waiting < 2:
        time.sleep(0.01)
    os.close(w)  # the last writer is gone: EOF
    try:
        for th in threads:
            th.join(25)
        assert [type(e) for e in errors] == [fastjob.JobserverClosedError] * 2
        # ... and every later waiter, sync and async
        with pytest.raises(fastjob.JobserverClosedError):
            c.acquire_blocking(timeout=5)

        async def later() -> None:
            with anyio.fail_after(5):
                await c.acquire()

        with pytest.raises(fastjob.JobserverClosedError):
            anyio.run(later)
        if strategy != "thread":  # a blocking description: only the reader reads
            with pytest.raises(fastjob.JobserverClosedError):
                c.try_acquire()
    finally:
        c.close()
        os.close(r)


@pytest.mark.parametrize("strategy", ["proc-reopen", "rwf-nowait"])
def test_dead_pool_try_acquire_is_closed_error(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTJOB_WAIT_STRATEGY", strategy)
    r, w = os.pipe()
    c = fastjob.Client(PipeTransport(r, w), implicit_token=False)
    os.close(w)
    try:
        with pytest.raises(fastjob.JobserverClosedError):
            c.try_acquire()  # the old native core: TypeError
        with pytest.raises(fastjob.JobserverClosedError):
            c.acquire_blocking(timeout=5)
    finally:
        c.close()
        os.close(r)


# -- 4. release into a full pipe -------------------------------------------------------
def _fill(path: str) -> tuple[int, int]:
    """Fill the pool to capacity through a private non-blocking writer."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    n = _io.fill(fd, ord("+"), 1 << 20)
    return fd, n


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_release_into_a_full_pool_raises_and_keeps_the_token(style: str) -> None:
    with fastjob.Server(2, style=style) as s:
        implicit = s.client.try_acquire()
        tok = s.client.try_acquire()
        assert implicit is not None and tok is not None and not tok.implicit
        path = s.path if style == "fifo" else f"/proc/self/fd/{s.pass_fds[1]}"
        assert path is not None
        wfd, filled = _fill(path)
        result: list[BaseException | None] = []

        def release() -> None:
            try:
                tok.release()
                result.append(None)
            except BaseException as exc:  # noqa: BLE001 - recorded for the assert
                result.append(exc)

        th = threading.Thread(target=release, daemon=True)
        th.start()
        th.join(10)
        assert not th.is_alive(), "release() blocked on a full pipe"
        assert isinstance(result[0], fastjob.JobserverError)
        assert "full" in str(result[0])
        assert not tok.released  # the byte is not lost: still ours to give back
        rpath = path if style == "fifo" else f"/proc/self/fd/{s.pass_fds[0]}"
        rfd = os.open(rpath, os.O_RDONLY | os.O_NONBLOCK)
        try:
            assert len(_io.drain(rfd, filled)) == filled
        finally:
            os.close(rfd)
            os.close(wfd)
        tok.release()
        implicit.release()
        assert tok.released and s.available() == 1


# -- 5. NaN and non-number timeouts ----------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), "1", [1], True])
def test_bad_timeout_is_value_error(bad: Any) -> None:
    with fastjob.Server(1) as s:
        held = s.client.try_acquire()
        result: list[BaseException] = []

        def call() -> None:
            try:
                s.client.acquire_blocking(timeout=bad)
            except BaseException as exc:  # noqa: BLE001
                result.append(exc)

        th = threading.Thread(target=call, daemon=True)
        th.start()
        th.join(10)
        assert not th.is_alive(), "acquire_blocking spun on a bad timeout"
        assert isinstance(result[0], ValueError)
        assert held is not None
        held.release()


# -- 6. the loop never waits under the thread strategy -----------------------------------
async def test_loop_never_waits_on_the_reader_thread(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTJOB_WAIT_STRATEGY", "thread")
    loop_thread = threading.get_ident()
    blocked: list[str] = []
    real_wait = threading.Event.wait
    real_wait_readable = _io.wait_readable

    def event_wait(self: threading.Event, timeout: float | None = None) -> bool:
        # (Thread.start() waits for the thread to run, without a timeout: not
        # a token wait)
        if threading.get_ident() == loop_thread and timeout:
            blocked.append("Event.wait")
        return real_wait(self, timeout)

    def wait_readable(*args: Any, **kw: Any) -> int:
        if threading.get_ident() == loop_thread:
            blocked.append("wait_readable")
        return real_wait_readable(*args, **kw)

    monkeypatch.setattr(threading.Event, "wait", event_wait)
    monkeypatch.setattr(_io, "wait_readable", wait_readable)
    with fastjob.Server(3) as s:
        c = s.client
        assert c.statistics().wait_strategy == "thread"
        for _ in range(20):
            async with c.token():
                async with c.token():
                    async with c.token():
                        pass
        assert blocked == []
        assert s.available() == 2


# -- 7. two Clients of one fd on one loop -----------------------------------------------
async def test_two_clients_of_one_fd_share_one_wait(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTJOB_WAIT_STRATEGY", "rwf-nowait")
    with fastjob.Server(2) as s:
        other = fastjob.from_env(s.env(clean_env()), strict=True)
        assert other is not None
        try:
            assert other.statistics().wait_strategy == "rwf-nowait"
            held = [s.client.try_acquire(), s.client.try_acquire()]
            got: list[str] = []

            async def take(c: fastjob.Client, name: str) -> None:
                async with c.token():
                    got.append(name)
                    await anyio.sleep(0.01)

            async with anyio.create_task_group() as tg:
                tg.start_soon(take, s.client, "server")
                tg.start_soon(take, other, "other")
                while s.client.statistics().tasks_waiting + other.statistics().tasks_waiting < 2:
                    await anyio.sleep(0.01)
                await anyio.sleep(0.05)  # both wait on the one shared fd now
                for t in held:
                    assert t is not None
                    t.release()
            assert sorted(got) == ["other", "server"]
            assert s.available() == 1
        finally:
            other.close()


# -- 9. threads are served first come, first served --------------------------------------
@pytest.mark.parametrize("strategy", POSIX_STRATEGIES)
def test_threads_served_in_order(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTJOB_WAIT_STRATEGY", strategy)
    with fastjob.Server(2) as s:
        c = s.client
        implicit, tok = c.try_acquire(), c.try_acquire()
        assert implicit is not None and tok is not None
        order: list[int] = []

        def worker(i: int) -> None:
            t = c.acquire_blocking(timeout=30)
            order.append(i)
            t.release()

        threads = []
        for i in range(8):
            th = threading.Thread(target=worker, args=(i,))
            th.start()
            threads.append(th)
            while c.statistics().tasks_waiting < i + 1:
                time.sleep(0.005)
        tok.release()  # one token goes round, through all eight in turn
        for th in threads:
            th.join(30)
        assert order == list(range(8))
        implicit.release()
        assert s.available() == 1


# -- 10. fd exhaustion in acquire_blocking: one clean error ------------------------------
def test_fd_exhaustion_is_one_clean_error() -> None:
    with fastjob.Server(1) as s:
        held = s.client.try_acquire()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fds: list[int] = []
        result: list[BaseException] = []
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
            try:
                while True:
                    fds.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass

            def call() -> None:  # a fresh thread: no wake-up pipe yet
                try:
                    s.client.acquire_blocking(timeout=1)
                except BaseException as exc:  # noqa: BLE001
                    result.append(exc)

            th = threading.Thread(target=call)
            th.start()
            th.join(10)
        finally:
            for fd in fds:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert len(result) == 1 and isinstance(result[0], fastjob.JobserverError)
        assert "ulimit" in str(result[0])
        assert s.client.statistics().tasks_waiting == 0
        assert held is not None
        held.release()


# -- a wait re-entered from a signal handler inside it -----------------------------
REENTER = r"""
import signal, sys, time
import fastjob

style, call = sys.argv[1], sys.argv[2]
with fastjob.Server(2, style=style) as s:
    c = s.client
    held = [c.try_acquire(), c.try_acquire()]
    seen = []

    def handler(signum, frame):
        if call == "try":
            seen.append(c.try_acquire())  # nothing free for it: None, at once
            return
        seen.append("in")
        c.acquire_blocking()  # no timeout: before, it waited for itself for good

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    t0 = time.monotonic()
    try:
        tok = c.acquire_blocking(timeout=1.0 if call == "try" else None)
        print("got")
    except RuntimeError as exc:
        print("error", "waiting for this client already" in str(exc))
    except TimeoutError:
        print("timeout", seen)
    for t in held:
        t.release()
    st = c.statistics()
    print(s.available(), st.tokens_held, st.tasks_waiting)
"""


@pytest.mark.parametrize("strategy", [*POSIX_STRATEGIES, "fifo"])
@pytest.mark.parametrize("call", ["blocking", "try"])
def test_a_wait_re_entered_from_a_handler_inside_it_fails_at_once(strategy: str, call: str) -> None:
    """A signal handler calls acquire_blocking() while its thread waits in
    acquire_blocking(): the inner wait would queue behind the outer one,
    which cannot go on until the handler returns.  A clear RuntimeError,
    not a wait for itself; a try_acquire() there just finds nothing."""
    style = "fifo" if strategy == "fifo" else "pipe"
    env = {"FASTJOB_WAIT_STRATEGY": "" if strategy == "fifo" else strategy}
    out = _run(REENTER, style, call, env=env, timeout=30).split("\n")
    if call == "blocking":
        assert out[0] == "error True"
    else:
        assert out[0] == "timeout [None]"
    assert out[1] == "1 0 0"


def test_a_raise_as_the_reader_thread_starts_leaves_one_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """The "thread" strategy: a handler's exception, deferred to the end of
    the signal block around the reader thread's start, skipped recording
    the thread; the next kick started a second one, and two threads did
    blocking reads of the pool (the sync storm test on this strategy saw a
    byte held by the stray one after the recorded one had exited)."""
    from fastjob import _waiting
    from fastjob import _reader as reader_mod

    monkeypatch.setenv("FASTJOB_WAIT_STRATEGY", "thread")
    with fastjob.Server(2) as s:
        c = s.client
        assert c._reader is not None
        held = [c.try_acquire(), c._reader.try_get(timeout=5)]
        w = _waiting.Waiter(1)
        assert not c._register(w)  # queued: the reader thread has someone to read for
        real = reader_mod._restore_signals
        raised: list[int] = []

        def restore_then_raise(old: object) -> None:
            real(old)
            if not raised:
                raised.append(1)
                raise KeyError("deferred")  # what a handler's deferred raise does there

        deadline = time.monotonic() + 5
        while c._reader._thread is not None and time.monotonic() < deadline:
            time.sleep(0.01)  # the reader of try_get has exited (nobody waited then)
        monkeypatch.setattr(reader_mod, "_restore_signals", restore_then_raise)
        with pytest.raises(KeyError):
            c._reader.kick()
        monkeypatch.setattr(reader_mod, "_restore_signals", real)
        c._reader.kick()
        time.sleep(0.1)
        readers = [t for t in threading.enumerate() if t.name == "fastjob-reader" and t.is_alive()]
        c._abandon(w)
        for t in held:
            assert t is not None
            t.release()
        assert len(readers) == 1, readers


# -- the pure core's signal mask, first needed in the middle of a storm ------------
MASK_LOAD = with_armed_handler(r"""
import gc, signal, time, warnings
import fastjob
from fastjob import _io_py

warnings.simplefilter("ignore", fastjob.TokenLeakWarning)

#: armed handler


with fastjob.Server(3) as s:
    c = s.client
    fresh = _io_py._native_mask is _io_py._UNSET  # else this proves nothing
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    end = time.monotonic() + 1.0
    calls = 0
    while time.monotonic() < end:
        ts = None
        try:
            armed = True
            calls += 1
            ts = c.try_acquire_up_to(2)  # blocks signals around its critical section
            ts.release()
        except Boom:
            pass
        finally:
            armed = False
            if ts is not None:
                ts.release()  # (a raise at the pure release()'s first instruction left it held)
    loaded = _io_py._native_mask is not _io_py._UNSET  # (the storm still on)
    signal.setitimer(signal.ITIMER_REAL, 0)
    gc.collect()
    st = c.statistics()
    print(fresh, loaded, calls > 100, s.available(), st.tokens_held)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal masks")
def test_the_signal_mask_loads_in_the_middle_of_a_storm() -> None:
    """The pure core loads its mask call (ctypes) the first time it blocks
    signals.  That import runs Python code for milliseconds; a handler that
    raised in it failed it every time, so under a storm from the start no
    critical section could be entered (a probe counted 6,870 imports of
    ctypes in 1.5 s).  It is loaded with every signal blocked now."""
    out = _run(MASK_LOAD, env={"FASTJOB_NO_EXTENSIONS": "1"})
    assert out.split() == ["True", "True", "True", "2", "0"]


def test_try_acquire_takes_no_argument() -> None:
    """No argument gets a try_acquire past the queue (the pure core's read
    path is one function with a keyword-only switch for the pump)."""
    with fastjob.Server(2) as s:
        with pytest.raises(TypeError):
            s.client.try_acquire(True)  # type: ignore[call-arg]
        tok = s.client.try_acquire()
        assert tok is not None
        tok.release()
