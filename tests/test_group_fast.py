"""JobGroup.spawn's synchronous path (a free token taken with try_acquire,
no wait): it must never jump the client's queue, never hold more than the
pool, leave no token behind when starting the task fails, and stay a
checkpoint on trio; asyncio, uvloop and trio, native and pure core."""

from __future__ import annotations

import gc
import sys
import warnings
from typing import Any

import anyio
import pytest

import fastjob
from conftest import backend_with_uvloop as anyio_backend  # noqa: F401 - asyncio, uvloop, trio

pytestmark = pytest.mark.anyio


async def test_never_more_tasks_than_slots() -> None:
    with fastjob.Server(jobs=3) as server:
        running = 0
        most = 0

        async def job() -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await anyio.sleep(0.001)
            running -= 1

        async with fastjob.JobGroup(server.client) as group:
            for _ in range(60):
                await group.spawn(job)
        assert most == 3
        assert server.client.statistics().tokens_held == 0


async def test_spawn_does_not_jump_a_queued_waiter() -> None:
    """A task already waiting in client.acquire() is served before a later
    group.spawn, even though spawn tries try_acquire first."""
    with fastjob.Server(jobs=2) as server:
        c = server.client
        a = c.try_acquire()
        b = c.try_acquire()
        assert a is not None and b is not None
        order: list[str] = []

        async def waiter() -> None:
            tok = await c.acquire()
            order.append("waiter")
            await anyio.sleep(0.05)
            tok.release()

        async def job() -> None:
            order.append("job")

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.05)  # the waiter is queued
            a.release()  # one token free: it belongs to the waiter
            async with fastjob.JobGroup(c) as group:
                await group.spawn(job)
        b.release()
        assert order == ["waiter", "job"]
        assert c.statistics().tokens_held == 0


async def test_failed_task_start_gives_the_token_back(monkeypatch: pytest.MonkeyPatch) -> None:
    with fastjob.Server(jobs=2) as server:
        async with fastjob.JobGroup(server.client) as group:
            tg = group._tg
            assert tg is not None

            def broken(*args: Any, **kwargs: Any) -> None:
                for a in args:
                    close = getattr(a, "close", None)  # a coroutine object, if any
                    if close is not None and hasattr(a, "cr_frame"):
                        close()
                raise RuntimeError("cannot start")

            monkeypatch.setattr(tg, "start_soon", broken)

            async def job() -> None:
                pass

            with pytest.raises(RuntimeError, match="cannot start"):
                await group.spawn(job)
            assert server.client.statistics().tokens_held == 0
            monkeypatch.undo()
        assert server.client.statistics().tokens_held == 0


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_spawn_in_a_cancelled_scope_is_a_checkpoint_on_trio() -> None:
    with fastjob.Server(jobs=2) as server:
        ran: list[int] = []

        async def job() -> None:
            ran.append(1)

        async with fastjob.JobGroup(server.client) as group:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await group.spawn(job)
            assert scope.cancelled_caught
        assert ran == []
        assert server.client.statistics().tokens_held == 0


async def test_exception_in_a_job_cancels_the_rest_and_returns_every_token() -> None:
    with fastjob.Server(jobs=2) as server:

        async def bad() -> None:
            raise ValueError("boom")

        async def slow() -> None:
            await anyio.sleep(30)

        with pytest.raises(BaseException) as info:
            async with fastjob.JobGroup(server.client) as group:
                await group.spawn(slow)
                await group.spawn(bad)
                for _ in range(5):
                    await group.spawn(slow)
        assert info.group_contains(ValueError) if hasattr(info, "group_contains") else True
        assert server.client.statistics().tokens_held == 0


# -- the hand-off (asyncio): a job that ends gives its slot to the waiting spawner --
def _no_leak_warnings(record: Any) -> None:
    leaks = [w for w in record if issubclass(w.category, fastjob.TokenLeakWarning)]
    assert not leaks, leaks


async def test_spawner_cancelled_while_waiting_for_a_hand_off() -> None:
    with fastjob.Server(jobs=2) as server:
        release = anyio.Event()

        async def job() -> None:
            await release.wait()

        async with fastjob.JobGroup(server.client) as group:
            await group.spawn(job)
            await group.spawn(job)
            with anyio.move_on_after(0.1) as scope:
                await group.spawn(job)  # waits: both slots busy
            assert scope.cancelled_caught
            release.set()
        assert server.client.statistics().tokens_held == 0
        assert group.started == 2


async def test_cancelled_after_the_hand_off_before_resuming() -> None:
    """The slot is handed over in the same loop step in which the spawner is
    cancelled: it must go on (to the pool), not be lost."""
    with fastjob.Server(jobs=1) as server:
        scope_box: list[anyio.CancelScope] = []

        async def job() -> None:
            if scope_box and sys.modules.get("asyncio") is not None:
                import asyncio

                try:
                    asyncio.get_running_loop().call_soon(scope_box[0].cancel)
                except RuntimeError:
                    scope_box[0].cancel()  # trio
            await anyio.sleep(0.05)

        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            async with fastjob.JobGroup(server.client) as group:
                await group.spawn(job)
                with anyio.CancelScope() as scope:
                    scope_box.append(scope)
                    await group.spawn(job)  # served and cancelled in one step
                    scope_box.clear()
                    await group.spawn(job)
            gc.collect()
        assert server.client.statistics().tokens_held == 0
        _no_leak_warnings(record)


async def test_watcher_takes_a_slot_freed_by_someone_else_while_jobs_run() -> None:
    """While this group's only job runs long, a slot freed outside the group
    (another holder) must start the next job without waiting for that job."""
    with fastjob.Server(jobs=2) as server:
        c = server.client
        outside = c.try_acquire()
        assert outside is not None
        second_started = anyio.Event()
        finish = anyio.Event()

        async def long() -> None:
            await finish.wait()

        async def second() -> None:
            second_started.set()

        async def free_later() -> None:
            await anyio.sleep(0.1)
            outside.release()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(free_later)
                async with fastjob.JobGroup(c) as group:
                    await group.spawn(long)
                    await group.spawn(second)  # the pool is empty: waits
                    await second_started.wait()  # started while long() still runs
                    finish.set()
        assert c.statistics().tokens_held == 0


async def test_hand_off_yields_to_an_older_waiter_of_the_process() -> None:
    with fastjob.Server(jobs=2) as server:
        c = server.client
        order: list[str] = []
        gate = anyio.Event()

        async def job(tag: str) -> None:
            order.append(tag)
            if tag in ("a", "b"):
                await gate.wait()

        async def outsider() -> None:
            tok = await c.acquire()
            order.append("outsider")
            tok.release()

        with anyio.fail_after(10):
            async with fastjob.JobGroup(c) as group:
                await group.spawn(job, "a")
                await group.spawn(job, "b")
                async with anyio.create_task_group() as tg:

                    async def spawn_c() -> None:
                        await group.spawn(job, "c")

                    tg.start_soon(outsider)
                    await anyio.sleep(0.05)  # the outsider queues in the client
                    tg.start_soon(spawn_c)
                    await anyio.sleep(0.05)  # spawn_c waits, after it
                    gate.set()  # a and b end: the first slot is the outsider's
        assert order == ["a", "b", "outsider", "c"]
        assert c.statistics().tokens_held == 0


async def test_job_error_while_a_spawner_waits_for_a_hand_off() -> None:
    with fastjob.Server(jobs=1) as server:

        async def bad() -> None:
            await anyio.sleep(0.05)
            raise KeyError("job failed")

        async def never() -> None:
            raise AssertionError("must not start")

        with pytest.raises(BaseException) as info:
            async with fastjob.JobGroup(server.client) as group:
                await group.spawn(bad)
                await group.spawn(never)  # waits for bad's slot; bad fails
        assert "job failed" in repr(info.value) or isinstance(info.value, KeyError)
        assert server.client.statistics().tokens_held == 0


async def test_spare_slots_go_back_soon_while_the_body_idles() -> None:
    with fastjob.Server(jobs=2) as server:
        c = server.client

        async def job() -> None:
            await anyio.sleep(0.001)

        async with fastjob.JobGroup(c) as group:
            for _ in range(20):
                await group.spawn(job)
            await anyio.sleep(0.3)  # every job has ended; the spawner idles
            assert c.statistics().tokens_held == 0
            # another task of the process can take both slots now
            a, b = c.try_acquire(), c.try_acquire()
            assert a is not None and b is not None
            a.release()
            b.release()


async def test_group_exit_does_not_wait_for_the_pool() -> None:
    """The watcher queued in the client must not keep the group's exit
    waiting while others hold every slot."""
    with fastjob.Server(jobs=2) as server:
        c = server.client
        outside = c.try_acquire()
        assert outside is not None
        done = anyio.Event()

        async def job() -> None:
            await anyio.sleep(0.05)
            done.set()

        with anyio.fail_after(10):
            async with fastjob.JobGroup(c) as group:
                await group.spawn(job)
                await group.spawn(job)  # waits for the first job's slot
            assert done.is_set()
        outside.release()
        assert c.statistics().tokens_held == 0


async def test_mixed_spawners_outsiders_and_short_jobs_never_exceed_the_pool() -> None:
    """Jobs of random lengths (0 to 3 ms), an outsider taking and giving back
    slots, pauses in the spawner: every path of the hand-off (direct, spare,
    dropped spare, watcher, the client's queue) in one run."""
    import random

    rng = random.Random(15)
    with fastjob.Server(jobs=2) as server:
        c = server.client
        running = 0
        most = 0
        done = 0

        async def job() -> None:
            nonlocal running, most, done
            running += 1
            most = max(most, running)
            try:
                await anyio.sleep(rng.choice((0, 0, 0.001, 0.003)))
            finally:
                running -= 1
                done += 1

        async def outsider() -> None:
            nonlocal running, most
            for _ in range(30):
                async with c.token():
                    running += 1  # the pool's slots, whoever holds them
                    most = max(most, running)
                    try:
                        await anyio.sleep(rng.choice((0, 0.002)))
                    finally:
                        running -= 1
                await anyio.sleep(0.001)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(outsider)
                async with fastjob.JobGroup(c) as group:
                    for i in range(300):
                        await group.spawn(job)
                        if i % 37 == 0:
                            await anyio.sleep(0.004)  # spares dropped meanwhile
        assert done == 300
        assert most <= 2
        assert c.statistics().tokens_held == 0


@pytest.mark.parametrize("weight", [1, 2])
async def test_tasks_cancelled_before_their_first_step_give_their_slots_back(weight: int) -> None:
    """spawn() takes the slots and starts a task; the group is cancelled
    before that task's first step.  (anyio starts such a task and cancels
    it at its first checkpoint; a task closed unstarted would never run its
    finally, so the group also gives back the slots of tasks that never ran.)
    No TokenLeakWarning, no wait for the collector."""
    import gc
    import warnings

    with fastjob.Server(4) as server, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ran = []

        async def job() -> None:
            ran.append(1)
            await anyio.sleep(10)

        with pytest.raises(Exception) as info:  # ZeroDivisionError, in an ExceptionGroup
            async with fastjob.JobGroup(server) as group:
                await group.spawn(job, weight=weight)
                await group.spawn(job, weight=weight)
                raise ZeroDivisionError  # before the tasks' first step
        assert "ZeroDivisionError" in repr(info.value)
        gc.collect()
        assert not [w for w in caught if issubclass(w.category, fastjob.TokenLeakWarning)], caught
        stats = server.client.statistics()
        assert stats.tokens_held == 0 and server.available() == 3


async def test_hand_off_yields_to_a_thread_waiting_alone() -> None:
    """A thread in acquire_blocking that found nobody queued waits alone in
    the core, outside the client's queue: a slot a job frees is still its
    (it came first), not the later spawner's."""
    import threading
    import time

    with fastjob.Server(jobs=2) as server:
        c = server.client
        order: list[str] = []
        gates = {"a": anyio.Event(), "b": anyio.Event()}
        got: list[fastjob.Token] = []

        async def job(tag: str) -> None:
            order.append(tag)
            if tag in gates:
                await gates[tag].wait()

        def outsider() -> None:
            got.append(c.acquire_blocking(timeout=20))
            order.append("thread")

        with anyio.fail_after(20):
            async with fastjob.JobGroup(c) as group:
                await group.spawn(job, "a")
                await group.spawn(job, "b")
                th = threading.Thread(target=outsider, daemon=True)
                th.start()
                while c._core.solo is None:  # type: ignore[attr-defined]
                    await anyio.sleep(0.002)
                async with anyio.create_task_group() as tg:

                    async def spawn_c() -> None:
                        await group.spawn(job, "c")

                    tg.start_soon(spawn_c)
                    await anyio.sleep(0.05)  # spawn_c waits, after the thread
                    gates["a"].set()  # one slot comes free: the thread's
                    t0 = time.monotonic()
                    while not got:
                        assert time.monotonic() - t0 < 10
                        await anyio.sleep(0.002)
                    await anyio.sleep(0.05)
                    assert "c" not in order
                    got[0].release()  # now c's
                    while "c" not in order:
                        await anyio.sleep(0.002)
                    gates["b"].set()
                th.join(10)
        assert order == ["a", "b", "thread", "c"]
        assert c.statistics().tokens_held == 0
