"""Waits that wake one process per token, and the hand-offs that serve a queue.

* Threads in ``acquire_blocking`` (Linux): the thread leader waits in a
  private epoll set with EPOLLEXCLUSIVE, so a token written to the pool wakes
  one of the waiting processes, not each of them; a leader the kernel woke
  alone that leaves without reading hands the byte on (else the other
  processes would sleep with a token in the pool).
* asyncio and uvloop: the fd's reader callback reads for the queue; its
  registration lives exactly as long as somebody of that loop queues.

Run on native and pure (FASTJOB_NO_EXTENSIONS=1).
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

import fastjob
from fastjob import _waiting

from conftest import asyncio_loops, run_on_loop

linux_only = pytest.mark.skipif(
    not hasattr(select, "EPOLLEXCLUSIVE"), reason="EPOLLEXCLUSIVE is Linux's"
)

# A child that waits in acquire_blocking, counts how often its leader's wait
# returned, and reports 'got' for each token it takes (and keeps).
_WAITER = textwrap.dedent(
    """
    import os, resource, sys
    import fastjob
    from fastjob import _waiting as w_mod
    out = int(sys.argv[1]); want = int(sys.argv[2]); mode = sys.argv[3]; how = sys.argv[4]
    if mode == "poll":  # the plain poll instead: every waiting process wakes
        w_mod.ExclusiveWait.usable = staticmethod(lambda: False)
        w_mod._EXCLUSIVE = False
    calls = [0]
    orig = w_mod.ExclusiveWait.wait
    def wait(self, timeout):
        r = orig(self, timeout)
        calls[0] += 1
        if mode == "raise-once" and r == 1 and calls[0] == 1:
            raise KeyboardInterrupt  # a handler raising right after the kernel woke us alone
        return r
    w_mod.ExclusiveWait.wait = wait
    def sleeps():  # how often this thread slept: each wait's wake counts one
        return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    c = fastjob.from_env(strict=True)
    implicit = c.try_acquire()  # this process's own slot: keep it
    if how == "one":
        acquire = c.acquire_blocking  # alone: the core's own wait
    elif how == "task":  # an asyncio task: the loop's reader callback
        import asyncio
    else:
        c._solo_ok = False  # never alone: queued, the thread leader waits
        acquire = c.acquire_blocking
    slept = sleeps()
    os.write(out, b"r")
    kept = []
    async def take_all():  # (one task, one running loop: the loop waits between tokens)
        while len(kept) < want:
            kept.append(await asyncio.wait_for(c.acquire(), 30))
            os.write(out, b"g")
    if how == "task":
        asyncio.run(take_all())
    while len(kept) < want:
        try:
            kept.append(acquire(timeout=30))
        except KeyboardInterrupt:
            os.write(out, b"k")  # and stop waiting: nobody here reads again
            break
        os.write(out, b"g")
    os.write(out, f"w{sleeps() - slept:06d}".encode())
    for t in kept:
        t.release()
    implicit.release()
    c.close()
    """
)


def _spawn_waiters(
    server: fastjob.Server, n: int, want: int, modes: list[str], how: str = "one"
) -> tuple[list[subprocess.Popen[bytes]], int]:
    r, w = os.pipe()
    procs = []
    env = server.env(dict(os.environ))
    for i in range(n):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WAITER, str(w), str(want), modes[i], how],
                env=env,
                pass_fds=(w, *server.pass_fds),
            )
        )
    os.close(w)
    return procs, r


class _Events:
    """The children's reports: r (ready), g (got a token), k (interrupted),
    wNNNNNN (wakes counted, at exit)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.wakes: list[int] = []

    def _byte(self, timeout: float) -> bytes:
        if not select.select([self.fd], [], [], timeout)[0]:
            raise TimeoutError("no report from the children in time")
        b = os.read(self.fd, 1)
        if not b:
            raise EOFError("the children exited")
        return b

    def next(self, timeout: float = 30) -> bytes:
        """The next r, g or k (wake counts are collected on the way)."""
        while True:
            b = self._byte(timeout)
            if b != b"w":
                return b
            self.wakes.append(int(b"".join(self._byte(timeout) for _ in range(6))))

    def drain(self, n_children: int, timeout: float = 30) -> list[bytes]:
        """Every report left until each child has given its wake count."""
        rest = []
        while len(self.wakes) < n_children:
            b = self._byte(timeout)
            if b == b"w":
                self.wakes.append(int(b"".join(self._byte(timeout) for _ in range(6))))
            else:
                rest.append(b)
        return rest


def _count_wakes(n: int, per: int, mode: str, how: str) -> int:
    """n processes, each with a thread waiting for ``per`` tokens on an empty
    pool; tokens are written one at a time: the wakes of all of them."""
    with fastjob.Server(1 + n * per) as s:
        held = [s.client.try_acquire_up_to(n * per + 1)]  # the pool is empty now
        pool_tokens = [t for t in held[0]._tokens if not t.implicit]  # type: ignore[attr-defined]
        assert len(pool_tokens) == n * per
        procs, out = _spawn_waiters(s, n, per, [mode] * n, how)
        ev = _Events(out)
        try:
            assert [ev.next() for _ in range(n)] == [b"r"] * n
            time.sleep(0.5)  # every child is in its wait now
            for tok in pool_tokens:
                tok.release()
                assert ev.next() == b"g"
                time.sleep(0.03)  # the losers (if any) settle back into their wait
            assert ev.drain(n) == []
        finally:
            for p in procs:
                p.wait(timeout=30)
            os.close(out)
        for t in held[0]._tokens:  # type: ignore[attr-defined]
            if t.implicit:
                t.release()
        assert s.available() == n * per
        return sum(ev.wakes)


@linux_only
@pytest.mark.parametrize("how", ["one", "many", "task"])
def test_a_token_wakes_one_waiting_process_not_each(how: str) -> None:
    """Three processes wait (alone in acquire_blocking: the core's own wait;
    queued, through acquire_many_blocking; or an asyncio task, through the
    loop's own epoll set): each write wakes one, where a plain poll wakes
    all three.  Wakes are the kernel's count of the
    waiting thread's sleeps (RUSAGE_THREAD), whatever code waited."""
    n, per = 3, 6
    wakes = _count_wakes(n, per, "count", how)
    # Each child's first wait and its last return also count: allow one
    # extra per child.  A non-exclusive wait gives about n * per * n.
    assert wakes <= n * per + 2 * n, f"{wakes} wakes for {n * per} tokens"


@linux_only
@pytest.mark.parametrize("how", ["one", "task"])
def test_the_wake_count_tells_a_plain_poll_apart(how: str) -> None:
    """The measure above sees the losers: with the plain poll (for a task:
    the loop's plain registration) each write wakes every waiting process,
    so there are more wakes than tokens (38-50 for 18 on a quiet machine,
    where the exclusive wait gives 18).  Only more than one per token is
    asserted: the final CI of 2026-12-02 saw 24 on a loaded machine, at the
    exclusive test's bound, and a control must not be flaky itself.  The
    CI of 2026-12-04 saw exactly 18 once ("one"), and "task" gave 20, 20,
    41, 20 in a row here: a loser that gets no CPU before the next write
    reads that one without sleeping again.  So up to three measurements,
    and one must see the losers: a measure blind to them sees none in any."""
    n, per = 3, 6
    seen = []
    for _ in range(3):
        seen.append(_count_wakes(n, per, "poll", how))
        if seen[-1] > n * per:
            return
    raise AssertionError(f"only {seen} wakes for {n * per} tokens with a plain poll")


@linux_only
@pytest.mark.parametrize("how", ["one", "many"])
def test_a_leader_woken_alone_that_leaves_hands_the_byte_on(how: str) -> None:
    """Child A's waiting thread is woken (alone) for the pool's byte and a
    signal handler raises before it reads: the byte must reach child B, which
    waits too.  Without the hand-on rule B sleeps until its timeout.  ("one":
    the thread waits alone, in the core's own wait; the native core reads
    before any Python code runs, so there is nothing to raise in.)"""
    if how == "one" and fastjob._io.NATIVE:
        pytest.skip("the native lone wait runs no Python code between the wake and the read")
    with fastjob.Server(3) as s:
        ts = s.client.try_acquire_up_to(3)
        pool = [t for t in ts._tokens if not t.implicit]  # type: ignore[attr-defined]
        assert len(pool) == 2
        procs, out = _spawn_waiters(s, 2, 1, ["raise-once", "raise-once"], how)
        ev = _Events(out)
        try:
            assert [ev.next(), ev.next()] == [b"r", b"r"]
            time.sleep(0.5)
            pool[0].release()
            # The child woken alone raises ('k') and stops waiting; the byte
            # must reach the other child without another write.  It raises
            # too on its first wake and hands the byte back: then nobody
            # waits, and the byte is in the pool.
            assert ev.next(timeout=10) == b"k"
            second = ev.next(timeout=10)
            assert second == b"k", second  # the other child was woken: hand-on worked
            assert ev.drain(2, timeout=10) == []
        finally:
            for p in procs:
                p.wait(timeout=30)
            os.close(out)
        pool[1].release()
        for t in ts._tokens:  # type: ignore[attr-defined]
            if t.implicit:
                t.release()
        assert s.available() == 2  # the handed-on byte came back too


@linux_only
def test_threads_of_one_process_still_queue_in_order_behind_the_exclusive_leader() -> None:
    """The leader's exclusive wait changes nothing inside the process: eight
    threads queued in order are served in order, by pool bytes and by
    in-process releases alike."""
    with fastjob.Server(2) as s:
        c = fastjob.from_env(environ=s.env(), strict=True)
        assert c is not None
        hold = [c.try_acquire()]  # the pool's byte (the Server's client has the implicit)
        assert c.try_acquire() is None
        order: list[int] = []
        lock = threading.Lock()

        def worker(i: int) -> None:
            tok = c.acquire_blocking(timeout=30)
            with lock:
                order.append(i)
            time.sleep(0.01)
            tok.release()

        threads = []
        for i in range(8):
            th = threading.Thread(target=worker, args=(i,))
            th.start()
            threads.append(th)
            deadline = time.monotonic() + 10
            while c.statistics().tasks_waiting < i + 1 and time.monotonic() < deadline:
                time.sleep(0.005)
        assert c._excl is not None
        for tok in hold:
            assert tok is not None
            tok.release()
        for th in threads:
            th.join(30)
        assert order == list(range(8))
        c.close()
        assert s.available() == 1


@pytest.mark.parametrize("loop", asyncio_loops())
def test_aio_reader_registration_lives_while_someone_queues(loop: str) -> None:
    """Many waiters on one loop: one registration while any queues, none
    once each was served, and none after a cancelled wait either."""
    with fastjob.Server(2) as s:
        c = fastjob.from_env(environ=s.env(), strict=True)
        assert c is not None
        held = [c.try_acquire()]  # the pool's byte (the Server's client has the implicit)

        async def main() -> None:
            tasks = [asyncio.ensure_future(c.acquire()) for _ in range(20)]
            for _ in range(5):
                await asyncio.sleep(0)
            assert len(_waiting.AioFdWatch.waiting) == 1
            for i in range(20):  # first come, first served: task i gets the i-th
                tok = held.pop(0)
                assert tok is not None
                tok.release()
                held.append(await asyncio.wait_for(tasks[i], 10))
                assert len(_waiting.AioFdWatch.waiting) == (1 if i < 19 else 0)
            # a cancelled wait leaves nothing registered either
            w = asyncio.ensure_future(c.acquire())
            for _ in range(3):
                await asyncio.sleep(0)
            assert len(_waiting.AioFdWatch.waiting) == 1
            w.cancel()
            await asyncio.gather(w, return_exceptions=True)
            assert not _waiting.AioFdWatch.waiting

        run_on_loop(loop, main())
        for tok in held:
            assert tok is not None
            tok.release()
        st = c.statistics()
        assert (st.tokens_held, st.tasks_waiting) == (0, 0)
        c.close()
        assert s.available() == 1


@pytest.mark.parametrize("loop", asyncio_loops())
def test_aio_close_reaches_every_waiter_and_leaves_no_registration(loop: str) -> None:
    """close() from another thread: every asyncio waiter gets the error, and
    the loop keeps no registration for the closed fd."""
    with fastjob.Server(1) as s:
        c = fastjob.from_env(environ=s.env(), strict=True)
        assert c is not None
        imp = c.try_acquire()

        async def main() -> None:
            tasks = [asyncio.ensure_future(c.acquire()) for _ in range(5)]
            for _ in range(5):
                await asyncio.sleep(0)
            threading.Thread(target=c.close).start()
            res = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
            assert all(isinstance(r, fastjob.JobserverError) for r in res), res
            await asyncio.sleep(0)
            assert not _waiting.AioFdWatch.waiting

        run_on_loop(loop, main())
        del imp


# A signal handler raising every 0.2 ms while six tasks contend for a pool of
# four (so they really queue and the fd's callback hands tokens over): the
# pool must come out exact.  Exceptions raised inside the loop's own
# callbacks are logged by asyncio and counted here, not lost.
_CONTENDED_STORM = r"""
import asyncio, gc, signal, sys, time, warnings
import fastjob

warnings.simplefilter("ignore", fastjob.TokenLeakWarning)
loop_kind, style = sys.argv[1], sys.argv[2]


class Boom(Exception):
    pass


armed = False


TARGETS = {"worker", "_ready", "_drop_idle"}


def handler(signum, frame):
    # Raise only inside the workers (and everything they call: fastjob's
    # acquire, release and wait) or fastjob's reader callbacks (asyncio logs
    # what a callback raises and goes on); asyncio's own machinery is not
    # built to survive a raise anywhere, so not there.
    if not armed:
        return
    f = frame
    while f is not None:
        if f.f_code.co_name in TARGETS:
            raise Boom
        f = f.f_back


async def worker(c, end, stats):
    global armed
    while time.monotonic() < end:
        tok = None
        try:
            armed = True
            tok = await c.acquire()
            stats[0] += 1
            await asyncio.sleep(0)
            # (a handler may raise at release()'s first instruction, before
            # any of it ran: pure only, the native one is a C call; the
            # token is still held then, and the finally releases it)
            tok.release()
        except Boom:
            pass
        finally:
            armed = False
            if tok is not None:
                tok.release()


async def main(c):
    end = time.monotonic() + 1.5
    stats = [0]
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, ctx: None)  # Boom inside a callback
    await asyncio.gather(*(worker(c, end, stats) for _ in range(6)), return_exceptions=True)
    return stats[0]


with fastjob.Server(4, style=style) as s:
    c = s.client
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    if loop_kind == "uvloop":
        import uvloop
        n = uvloop.run(main(c))
    else:
        n = asyncio.run(main(c))
    armed = False
    signal.setitimer(signal.ITIMER_REAL, 0)
    gc.collect()
    time.sleep(0.05)
    st = c.statistics()
    print(n > 0, s.available(), st.tokens_held, st.implicit_held, st.tasks_waiting)
"""


@pytest.mark.parametrize("style", ["pipe", "fifo"])
@pytest.mark.parametrize("loop", asyncio_loops())
def test_contended_async_signal_storm_keeps_the_pool_exact(loop: str, style: str) -> None:
    # (Until the worker above released again in its finally, a raise at
    # the pure release()'s first instruction left the token in a variable
    # the worker dropped only after its next acquire: the script's own leak,
    # seen as the waiters asleep on the pool, about 1 run in 10 to 100.)
    out = subprocess.run(
        [sys.executable, "-c", _CONTENDED_STORM, loop, style],
        capture_output=True, text=True, timeout=40,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["True", "3", "0", "False", "0"], (out.stdout, out.stderr[-2000:])


@pytest.mark.parametrize("loop", asyncio_loops())
def test_a_closed_clients_registration_never_outlives_its_fd(loop: str) -> None:
    """A client served by the reader callback is closed in the same step and
    a new client gets the same fd number: the new one's wait must be watched
    (a registration left for the old file would be a stale selector entry,
    and the new file would never wake anyone)."""
    with fastjob.Server(2) as s:
        env = dict(s.env(), FASTJOB_WAIT_STRATEGY="proc-reopen")
        holder = fastjob.from_env(environ=env, strict=True)
        assert holder is not None
        tok = holder.try_acquire()  # the pool is empty now
        assert tok is not None

        async def main() -> None:
            a = fastjob.from_env(environ=env, strict=True)
            assert a is not None

            async def release_soon() -> None:
                for _ in range(3):
                    await asyncio.sleep(0)
                assert tok is not None
                tok.release()

            helper = asyncio.ensure_future(release_soon())
            t = await a.acquire()  # served by the reader callback
            t.release()
            a.close()  # in the step the hand-off woke: the registration is still idle
            await helper
            again = holder.try_acquire()  # the pool is empty again
            assert again is not None
            c = fastjob.from_env(environ=env, strict=True)
            assert c is not None

            async def release_again() -> None:
                for _ in range(3):
                    await asyncio.sleep(0)
                again.release()  # c must be woken for this byte

            helper = asyncio.ensure_future(release_again())
            me = asyncio.current_task()
            assert me is not None
            guard = asyncio.get_running_loop().call_later(10, me.cancel)
            try:
                # in this very step, so that c queues before the idle
                # registration of a's closed fd would have been dropped
                (await c.acquire()).release()
            except asyncio.CancelledError:
                pytest.fail("the new client's wait was never woken")
            guard.cancel()
            await helper
            c.close()

        run_on_loop(loop, main())
        holder.close()
        assert s.available() == 1


_FORK_WHILE_LEADING = r"""
import os, sys, threading, time
import fastjob
with fastjob.Server(3) as s:
    c = s.client
    held = [c.try_acquire(), c.try_acquire(), c.try_acquire()]  # implicit + 2: the pool is empty
    got = []
    th = threading.Thread(target=lambda: got.append(c.acquire_blocking(timeout=20)))
    th.start()
    while c.statistics().tasks_waiting < 1:
        time.sleep(0.005)
    assert c._excl is not None  # the parent's thread leader waits exclusively
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        # the child: its own wait, its own epoll set (not the parent's)
        try:
            os.close(r)
            assert c._excl is None
            os.write(w, b"w")
            tok = c.acquire_blocking(timeout=20)
            os.write(w, b"g")
            tok.release()
            os._exit(0)
        except BaseException as e:
            os.write(w, repr(e).encode())
            os._exit(1)
    os.close(w)
    assert os.read(r, 1) == b"w"
    time.sleep(0.3)
    held.pop().release()
    held.pop().release()
    assert os.read(r, 1) == b"g", "the child was not served"
    th.join(20)
    assert got, "the parent's thread was not served"
    _, status = os.waitpid(pid, 0)
    assert status == 0
    got[0].release()
    held.pop().release()
    print(s.available(), c.statistics().tokens_held)
"""


@linux_only
def test_a_child_forked_while_the_thread_leader_waits_gets_its_own_exclusive_wait() -> None:
    """The parent's thread leader waits in its epoll set when the process
    forks: the child must not wait on the parent's set (an epoll instance
    and its EPOLLEXCLUSIVE registration are shared across fork) but on its
    own, and both are served, each by one of two tokens."""
    out = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", _FORK_WHILE_LEADING],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["2", "0"], out.stdout


_LONE_WAITER = """
import os, sys, fastjob
c = fastjob.from_env(strict=True)
implicit = c.try_acquire()  # its own slot: kept
os.write(int(sys.argv[1]), b"r")
try:
    tok = c.acquire_blocking(timeout=8)
except TimeoutError:
    os.write(int(sys.argv[1]), b"t")
else:
    os.write(int(sys.argv[1]), b"g")
    tok.release()
implicit.release()
c.close()
"""


@linux_only
def test_a_loop_registration_that_goes_hands_its_wake_on() -> None:
    """The loop's registration waits with EPOLLEXCLUSIVE, first in the
    pipe's queue, so the kernel wakes this loop alone for a byte another
    process writes.  In the same loop iteration, before the reader callback
    runs, a release here serves the loop's only waiter: the callback finds
    nobody waiting and the registration goes.  It must read the byte and
    give it back, else child B, waiting in acquire_blocking, sleeps until
    its timeout with a token in the pool."""

    async def main() -> str:
        s = fastjob.Server(2)
        c = s.client
        implicit = c.try_acquire()
        r, w = s.pass_fds
        os.set_blocking(r, False)
        byte = os.read(r, 1)  # the pool is empty; this byte comes back "from another process"
        os.set_blocking(r, True)
        loop = asyncio.get_running_loop()
        waiter = asyncio.ensure_future(c.acquire())
        await asyncio.sleep(0.05)  # queued
        k = (loop, c._t.read_fd)
        assert k in _waiting.AioFdWatch.exclusive
        orig = _waiting.AioFdWatch._ready
        calls = []

        def ready(key: object) -> None:
            if not calls:
                implicit.release()  # serves the waiter in-process, before this callback
            calls.append(key)
            orig(key)

        _waiting.AioFdWatch._ready = ready  # type: ignore[method-assign]
        loop.remove_reader(k[1])
        loop.add_reader(k[1], ready, k)
        assert _waiting._make_exclusive(loop, k[1])  # (before the child's: first in the queue)
        out_r, out_w = os.pipe()
        child = subprocess.Popen(
            [sys.executable, "-c", _LONE_WAITER, str(out_w)],
            env=s.env(dict(os.environ)), pass_fds=(out_w, *s.pass_fds),
        )
        os.close(out_w)
        assert await loop.run_in_executor(None, os.read, out_r, 1) == b"r"
        await asyncio.sleep(0.5)  # the child waits now
        try:
            threading.Timer(0.2, os.write, (w, byte)).start()  # while the loop waits
            tok = await asyncio.wait_for(waiter, 5)
            assert tok.implicit and calls
            report = await loop.run_in_executor(None, os.read, out_r, 1)
        finally:
            _waiting.AioFdWatch._ready = orig  # type: ignore[method-assign]
        child.wait(timeout=20)
        os.close(out_r)
        tok.release()
        assert k not in _waiting.AioFdWatch.waiting
        assert s.available() == 1
        s.close()
        return report.decode()

    assert asyncio.run(main()) == "g", "the child slept with a token in the pool"


_CANCELLING_TASKS = """
import asyncio, os, random, sys, fastjob
async def main():
    c = fastjob.from_env(strict=True)
    implicit = c.try_acquire()  # its own slot, kept: every token comes through the pool
    for _ in range(300):
        try:
            async with asyncio.timeout(random.random() * 0.002):  # cancelled at any await
                async with c.token():
                    await asyncio.sleep(random.random() * 0.001)
        except TimeoutError:
            pass
    # At the end every process waits for one token with no timeout of its own:
    # a wake lost along the way leaves one sleeping with a token in the pool.
    tok = await asyncio.wait_for(c.acquire(), 20)
    tok.release()
    implicit.release()
    c.close()
    print("ok")
asyncio.run(main())
"""


@linux_only
def test_exclusive_loop_waits_lose_no_wake_under_cancellation() -> None:
    """Four processes, each an asyncio task that acquires with a random
    timeout of up to 2 ms (so it is cancelled while queued, while being
    served and while holding), on a pool of two: every process finishes,
    each final wait is served, and the pool comes out exact.  (A stress of
    conservation and liveness; the hand-on rule itself is pinned by
    test_a_loop_registration_that_goes_hands_its_wake_on, since here the
    other processes' releases soon wake a loop that missed one.)"""
    with fastjob.Server(3) as s:
        implicit = s.client.try_acquire()
        env = s.env(dict(os.environ))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CANCELLING_TASKS], env=env, pass_fds=s.pass_fds,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for _ in range(4)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, [e[-2000:] for _, e in outs]
        assert [o.strip() for o, _ in outs] == ["ok"] * 4
        assert s.available() == 2
        implicit.release()


@linux_only
def test_a_registration_that_goes_passes_a_byte_through_uncounted() -> None:
    """Free tokens sit in the pool when a loop's last waiter is served and
    its registration goes: the hand-on read passes one through (it may be
    the wake the kernel gave this loop alone) and gives it back, and that is
    no acquire: the statistics and the pool are as before."""

    async def main() -> None:
        with fastjob.Server(3) as s:
            c = s.client
            loop = asyncio.get_running_loop()
            fd = c._t.read_fd
            before = c.statistics().tokens_acquired
            for _ in range(5):
                _waiting.AioFdWatch.join(loop, fd, c)
                assert (loop, fd) in _waiting.AioFdWatch.exclusive
                _waiting.AioFdWatch.leave(loop, fd, c)
            assert (loop, fd) not in _waiting.AioFdWatch.waiting
            assert c.statistics().tokens_acquired == before
            assert s.available() == 2

    asyncio.run(main())


class _Boom(Exception):
    pass


def _epoll_events(selector: Any, fd: int) -> int | None:
    """fd's event mask in the loop's epoll set (EPOLLIN: 1, EPOLLEXCLUSIVE:
    1 << 28; the kernel may add EPOLLERR/EPOLLHUP bits), None if absent."""
    ep = selector._selector.fileno()
    with open(f"/proc/self/fdinfo/{ep}") as f:
        for line in f:
            parts = line.split()
            if parts[:1] == ["tfd:"] and int(parts[1]) == fd:
                return int(parts[3], 16) & (0x10000000 | 1)
    return None


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
@pytest.mark.parametrize("loop_name", asyncio_loops())
def test_a_handler_raising_at_any_line_of_a_registration_change_leaves_it_whole(
    loop_name: str,
) -> None:
    """A signal handler raises at the n-th line that AioFdWatch.join or
    leave runs, for every n.  The record of the loop's registrations and
    the loop's own registration must still agree: a record with no
    registration leaves its waiters asleep with a token in the pool; a
    registration with no record (or no client) calls back in a spin; an
    exclusive one not marked as such skips its hand-on."""
    watched = {_waiting.AioFdWatch.join.__code__, _waiting.AioFdWatch.leave.__code__}

    def raise_at(n: int) -> tuple[Any, list[int]]:
        seen = [0]

        def local(frame: Any, event: str, arg: object) -> Any:
            if event == "line":
                seen[0] += 1
                if seen[0] == n + 1:
                    # its handler raises at once (here: at this line), or
                    # where the signal is unblocked
                    signal.raise_signal(signal.SIGUSR1)
            return local

        def tracer(frame: Any, event: str, arg: object) -> Any:
            return local if frame.f_code in watched else None

        return tracer, seen

    def handler(signum: int, frame: object) -> None:
        raise _Boom

    async def main() -> int:
        s = fastjob.Server(2)
        c = s.client
        held = [c.try_acquire(), c.try_acquire()]  # the implicit one and the pool's one
        loop = asyncio.get_running_loop()
        fd = c._t.read_fd
        selector = getattr(loop, "_selector", None)  # asyncio's; uvloop keeps its own
        n = 0
        while True:
            tracer, seen = raise_at(n)
            sys.settrace(tracer)
            try:
                await asyncio.wait_for(c.acquire(), 0.05)
            except (_Boom, TimeoutError):
                pass
            finally:
                sys.settrace(None)
            await asyncio.sleep(0)  # an idle registration goes on the next iteration
            await asyncio.sleep(0)
            k = (loop, fd)
            recorded = k in _waiting.AioFdWatch.waiting
            marked = k in _waiting.AioFdWatch.exclusive
            assert recorded or not marked, n
            if selector is not None:
                assert (fd in selector.get_map()) == recorded, f"record and loop disagree (line {n})"
                assert _epoll_events(selector, fd) == (
                    (0x10000000 | 1) if marked else 1 if recorded else None
                ), f"marked exclusive or not, and the epoll set disagree (line {n})"
            # and the next waiter is served by a byte written to the pool
            waiter = asyncio.ensure_future(c.acquire())
            await asyncio.sleep(0.01)
            held.pop().release()
            held.append(await asyncio.wait_for(waiter, 5))
            if seen[0] <= n:
                break  # no line n: every line has had its turn
            n += 1
        for t in held:
            t.release()
        assert s.available() == 1
        s.close()
        return n

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        lines = run_on_loop(loop_name, main())
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert lines > 10  # join and leave both ran under the tracer
