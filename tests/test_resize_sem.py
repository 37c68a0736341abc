"""Server.resize of a semaphore (Windows-style) pool, on any platform: the
Server runs on the in-process stand-in for the kernel's semaphores and
events (test_windows_sem.ThreadSemaphores, with the kernel's rules).  The
same behaviour on real semaphores, under wine or Windows: tests/win."""

from __future__ import annotations

import random
import threading
import time

import anyio
import pytest

import fastjob
from fastjob import server as _server
from fastjob._core import sem as _sem

from test_windows_sem import ThreadSemaphores


class CountingKernel(ThreadSemaphores):
    """Counts every kernel wait (to see that an idle settle thread sleeps)."""

    def __init__(self) -> None:
        super().__init__()
        self.wait_calls = 0

    def wait(self, sem: int, cancel: int, timeout: float | None) -> int:
        with self.cond:
            self.wait_calls += 1
        return super().wait(sem, cancel, timeout)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> CountingKernel:
    k = CountingKernel()
    monkeypatch.setattr(_server, "_sem_api", k)
    return k


def _wait_for(cond: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def _count(s: fastjob.Server, k: ThreadSemaphores) -> int:
    return k.count_of(s._sem_name)


def test_shrink_and_grow_free_pool(kernel: CountingKernel) -> None:
    with fastjob.Server(8, style="sem") as s:
        assert s.style == "sem" and _count(s, kernel) == 7
        s.resize(4)
        st = s.statistics()
        assert (st.jobs, st.effective, st.free, st.withheld, st.limited_by) == (4, 4, 3, 4, ())
        assert _count(s, kernel) == 3  # withheld counts are really out of the semaphore
        assert "-j4" in s.env()["MAKEFLAGS"] and s._sem_name in s.env()["MAKEFLAGS"]
        s.resize(11)  # the 4 withheld back, then 3 new counts released
        st = s.statistics()
        assert (st.jobs, st.effective, st.free, st.withheld) == (11, 11, 10, 0)
        assert _count(s, kernel) == 10
        s.resize(1)
        assert s.statistics().free == 0 and s.withheld == 10 and _count(s, kernel) == 0
        assert s.reconcile() == 0
    # close: no TokenLeakWarning (filterwarnings=error); the counts are back
    assert kernel.counts == {}  # every handle closed, the semaphore gone


def test_growth_beyond_the_maximum_count_is_a_clear_error(
    kernel: CountingKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sem, "SEM_MAX_COUNT", 9)
    with fastjob.Server(4, style="sem") as s:
        with pytest.raises(ValueError, match="holds only"):
            s.resize(20)
        # the old size; the 6 counts that did fit are withheld, as on a pipe
        assert s.jobs == 4 and s.available() == 3 and s.withheld == 6
        assert "-j4" in s.env()["MAKEFLAGS"]
        s.resize(10)  # 9 counts: exactly the maximum
        assert s.available() == 9 and s.withheld == 0
        assert s.reconcile() == 0


def test_shrink_never_takes_a_held_token_and_withholds_it_on_return(
    kernel: CountingKernel,
) -> None:
    with fastjob.Server(5, style="sem") as s:
        held = [s.client.acquire_blocking() for _ in range(4)]  # implicit + 3
        assert s.available() == 1
        s.resize(2)  # 1 token wanted in circulation: 3 held + 1 free
        assert s.withheld == 1 and s.available() == 0
        assert all(not t.released for t in held)
        for t in held[1:]:
            t.release()
        _wait_for(lambda: s.withheld == 3)
        assert s.available() == 1 and s._size.owed == 0
        held[0].release()
        assert s.statistics().free == 1


def test_a_token_returned_by_another_process_is_withheld(kernel: CountingKernel) -> None:
    """A child (its own handle on the semaphore, by name) returns its token
    while a shrink is owed: the settle thread's kernel wait takes it."""
    with fastjob.Server(3, style="sem") as s:
        child = fastjob.Client(_sem.SemaphoreTransport(s._sem_name, api=kernel), jobs=3,
                               implicit_token=False)
        try:
            b, c = child.try_acquire(), child.try_acquire()  # both pool tokens
            assert b and c and s.available() == 0
            s.resize(1)
            assert s._size.owed == 2
            b.release()
            _wait_for(lambda: s.withheld == 1)
            c.release()
            _wait_for(lambda: s.withheld == 2)
            assert s._size.owed == 0 and s.available() == 0
            assert child.try_acquire() is None
        finally:
            child.close()


def test_grow_while_the_settle_thread_waits_loses_nothing(kernel: CountingKernel) -> None:
    """The settle thread waits in the kernel for tokens to withhold; a resize
    up wakes it, and a token it takes after that goes back to the pool."""
    with fastjob.Server(4, style="sem") as s:
        held = [s.client.acquire_blocking() for _ in range(4)]
        s.resize(1)  # owes 3: the thread waits in take_returned
        _wait_for(lambda: s._size._thread is not None)
        for _ in range(20):
            s.resize(4)
            s.resize(1)
        s.resize(4)
        for t in held:
            t.release()
        _wait_for(lambda: s.available() == 3)
        time.sleep(0.3)  # one more SETTLE_POLL: nothing may be taken now
        assert s.available() == 3 and s.withheld == 0 and s.reconcile() == 0


def test_an_idle_settle_thread_makes_no_kernel_waits(kernel: CountingKernel) -> None:
    with fastjob.Server(4, style="sem") as s:
        tok = s.client.acquire_blocking()
        held = [s.client.acquire_blocking() for _ in range(2)]
        s.resize(2)
        for t in held:
            t.release()
        _wait_for(lambda: s._size.owed == 0)
        time.sleep(0.05)
        with kernel.cond:
            before = kernel.wait_calls
        time.sleep(0.8)  # more than three SETTLE_POLLs
        with kernel.cond:
            assert kernel.wait_calls == before  # asleep on its condition, no polling
        tok.release()


def test_reconcile_and_close_count_withheld_counts(kernel: CountingKernel) -> None:
    with fastjob.Server(6, style="sem") as s:
        s.resize(3)
        assert s.reconcile() == 0
        assert s.available() == 2 and s.withheld == 3
        h = s._transport._sem  # type: ignore[attr-defined]
        assert kernel.try_acquire(h)  # a "child" died holding a token
        assert s.reconcile() == 1
        assert s.available() == 2 and s.withheld == 3
        kernel.release(h)
        kernel.release(h)  # a "child" released two it never took
        assert s.reconcile() == -2
        assert s.available() == 2 and s.withheld == 3


def test_close_warns_when_a_count_is_really_missing_after_resize(kernel: CountingKernel) -> None:
    s = fastjob.Server(6, style="sem")
    s.resize(3)
    assert kernel.try_acquire(s._transport._sem)  # type: ignore[attr-defined]
    # 2 of the 5 counts in circulation (3 withheld), one of them lost
    with pytest.warns(fastjob.TokenLeakWarning, match=r"1 jobserver token.*\(pool 1, expected 2\)"):
        s.close()


def test_close_gives_withheld_counts_back_for_children_still_running(
    kernel: CountingKernel,
) -> None:
    s = fastjob.Server(5, style="sem")
    child = _sem.SemaphoreTransport(s._sem_name, api=kernel)  # keeps the semaphore alive
    try:
        s.resize(2)
        assert kernel.count_of(s._sem_name) == 1
        s.close()
        assert kernel.count_of(child.name) == 4
    finally:
        child.close()


def test_resize_while_four_clients_hammer_the_pool(kernel: CountingKernel) -> None:
    """Four "processes" (each its own handle and Client, in threads) acquire
    and release as fast as they can while the pool shrinks and grows: after
    the withholding settles never more holders than the new size allows, and
    every count is back at the end."""
    holders = 0
    peak = 0
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    with fastjob.Server(6, style="sem") as s:
        rounds = [0] * 4

        def hammer(i: int) -> None:
            nonlocal holders, peak
            c = fastjob.Client(_sem.SemaphoreTransport(s._sem_name, api=kernel), jobs=6,
                               implicit_token=False)
            try:
                while not stop.is_set():
                    try:
                        tok = c.acquire_blocking(timeout=0.05)
                    except TimeoutError:
                        continue
                    with lock:
                        holders += 1
                        peak = max(peak, holders)
                    time.sleep(random.random() * 0.002)
                    with lock:
                        holders -= 1
                    tok.release()
                    rounds[i] += 1
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                c.close()

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            _wait_for(lambda: min(rounds) > 20)
            for new in (3, 1, 2, 5, 1):
                s.resize(new)
                _wait_for(lambda: s._size.owed == 0)
                with lock:
                    peak = holders
                    assert holders <= new - 1, (new, holders)
                before = sum(rounds)
                if new > 1:
                    _wait_for(lambda: sum(rounds) > before + 50)
                else:
                    time.sleep(0.3)
                with lock:
                    assert peak <= new - 1, (new, peak)
                if new == 1:
                    assert sum(rounds) - before <= 0  # nobody acquires at all
                st = s.statistics()
                assert st.effective == new and st.jobs == new
            s.resize(6)
            assert s.withheld == 0
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not errors, errors
        assert all(r > 0 for r in rounds)
        assert s.available() == 5 and s.withheld == 0
        assert s.reconcile() == 0


@pytest.mark.anyio
async def test_waiters_woken_when_the_pool_grows(kernel: CountingKernel) -> None:
    with fastjob.Server(3, style="sem") as s:
        s.resize(1)
        first = await s.client.acquire()
        got: list[fastjob.Token] = []

        async def waiter() -> None:
            got.append(await s.client.acquire())

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                tg.start_soon(waiter)
                await anyio.sleep(0.2)
                assert got == []
                s.resize(3)
        assert len(got) == 2
        for t in (first, *got):
            t.release()
        _wait_for(lambda: s.available() == 2)


def test_grow_wakes_a_thread_waiting_in_acquire_blocking(kernel: CountingKernel) -> None:
    with fastjob.Server(2, style="sem") as s:
        s.resize(1)
        first = s.client.acquire_blocking()
        box: list[fastjob.Token] = []
        t = threading.Thread(target=lambda: box.append(s.client.acquire_blocking(timeout=20)))
        t.start()
        time.sleep(0.1)
        assert not box
        s.resize(2)
        t.join(20)
        assert len(box) == 1
        box[0].release()
        first.release()


def test_governor_on_a_semaphore_pool(kernel: CountingKernel) -> None:
    """The governor's cap withholds counts of a semaphore pool like a resize."""
    from fastjob._governor import Governor, Readings

    class Src:
        platform = "linux"
        r = Readings(load=9.0)

        def read(self) -> Readings:
            return self.r

    with fastjob.Server(4, style="sem") as s:
        g = Governor(fastjob.Limits(load_average=1.0), s._size, source=Src())
        g.prepare()
        g.step()
        st = s.statistics()
        assert (st.effective, st.withheld, st.free, st.limited_by) == (2, 2, 1, ("load",))
        assert _count(s, kernel) == 1



class SlowHandKernel(CountingKernel):
    """After a wait of the server's settle thread that took a count, that
    thread is "descheduled" for 50 ms: a count in its hands, in neither the
    semaphore nor the withheld list."""

    def wait(self, sem: int, cancel: int, timeout: float | None) -> int:
        r = super().wait(sem, cancel, timeout)
        if r == _sem.SEM_ACQUIRED and threading.current_thread().name == "fastjob-pool-size":
            time.sleep(0.05)
        return r


def test_reconcile_never_counts_a_token_in_the_settle_threads_hands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k = SlowHandKernel()
    monkeypatch.setattr(_server, "_sem_api", k)
    with fastjob.Server(4, style="sem") as s:
        h = s._transport._sem  # type: ignore[attr-defined]
        name = s._sem_name
        for _ in range(5):
            assert k.try_acquire(h)  # a "child" holds one count
            s.resize(1)  # the two free ones withheld at once; one owed
            assert s.withheld == 2 and s._size.owed == 1
            with k.cond:  # the settle thread waits in the kernel
                assert k.cond.wait_for(lambda: bool(k.queues.get(name)), 10)
            k.release(h)  # the child returns it: handed to that wait
            assert s.reconcile() == 0  # nothing was lost
            assert s.withheld == 3 and s.available() == 0
            s.resize(4)
            assert s.available() == 3 and s.withheld == 0 and s.reconcile() == 0
