"""JobGroup.spawn's synchronous path (a free token taken with try_acquire,
no wait): it must never jump the client's queue, never hold more than the
pool, leave no token behind when starting the task fails, and stay a
checkpoint on trio; asyncio, uvloop and trio, native and pure core."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import fastjob

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    if request.param != "asyncio" and request.param != "trio":
        pytest.importorskip("uvloop")
    return request.param


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
