"""``async with client.token()``: the context lives in the core (native: in
C, returning ready awaitables on asyncio; pure: coroutines).  Hostile
cases: cancellation at every point, errors in the body, tracing (the
fallback path of the ready awaitable), trio's checkpoint, uvloop."""

from __future__ import annotations

import asyncio
import random
import sys

import anyio
import pytest

import fastjob
from fastjob import _io

from conftest import asyncio_loops, run_on_loop

_loops = asyncio_loops
_run = run_on_loop


@pytest.mark.parametrize("loop", _loops())
def test_free_token_enters_without_a_loop_round_trip(loop: str) -> None:
    with fastjob.Server(2) as s:
        c = s.client
        order: list[str] = []

        async def main() -> None:
            asyncio.get_running_loop().call_soon(order.append, "other")
            async with c.token() as a:  # implicit
                async with c.token() as b:  # the pool's byte
                    order.append("inside")
                    assert a.implicit and not b.implicit
            await asyncio.sleep(0)
            assert a.released and b.released

        _run(loop, main())
        assert order == ["inside", "other"]
        assert s.available() == 1 and c.statistics().tokens_held == 0


@pytest.mark.parametrize("loop", _loops())
def test_error_in_the_body_releases_and_propagates(loop: str) -> None:
    with fastjob.Server(2) as s:
        c = s.client

        async def main() -> None:
            for _ in range(3):
                with pytest.raises(KeyError):
                    async with c.token(), c.token():
                        raise KeyError("x")

        _run(loop, main())
        assert s.available() == 1 and c.statistics().tokens_held == 0


def test_a_context_can_be_entered_again() -> None:
    with fastjob.Server(2) as s:
        ctx = s.client.token()

        async def main() -> None:
            for _ in range(3):
                async with ctx as t:
                    assert not t.released
                assert t.released

        asyncio.run(main())
        assert s.client.statistics().tokens_held == 0


def test_ready_awaitable_under_a_tracer() -> None:
    """With a trace function the interpreter awaits through __next__ /
    send instead of the native fast slot: same results."""
    with fastjob.Server(2) as s:
        c = s.client

        async def main() -> list[bool]:
            got = []
            for _ in range(3):
                async with c.token() as a, c.token() as b:
                    got += [a.implicit, b.implicit]
            assert (await _io.ready(7)) == 7
            return got

        def tracer(frame: object, event: str, arg: object) -> object:
            return tracer

        sys.settrace(tracer)  # type: ignore[arg-type]
        try:
            got = asyncio.run(main())
        finally:
            sys.settrace(None)
        assert got == [True, False] * 3
        assert s.available() == 1 and c.statistics().tokens_held == 0


def test_trio_token_is_a_checkpoint() -> None:
    trio = pytest.importorskip("trio")
    with fastjob.Server(2) as s:
        c = s.client

        async def main() -> None:
            with trio.CancelScope() as scope:
                scope.cancel()
                async with c.token():
                    raise AssertionError("entered a cancelled scope")
            assert scope.cancelled_caught
            async with c.token() as t:
                assert t.implicit

        trio.run(main)
        assert s.available() == 1 and c.statistics().tokens_held == 0


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_random_cancellation_keeps_the_pool_exact(backend: str, style: str) -> None:
    """Tasks enter and leave token() with cancel deadlines landing at any
    point (before, while waiting, inside the body): nothing is lost."""
    if backend == "uvloop" and "uvloop" not in _loops():
        pytest.skip("uvloop is not installed")
    rnd = random.Random(13)
    with fastjob.Server(3, style=style) as s:
        c = s.client

        async def task(deadline: float) -> None:
            with anyio.move_on_after(deadline):
                async with c.token():
                    await anyio.sleep(rnd.random() * 0.002)

        async def main() -> None:
            for _ in range(30):
                async with anyio.create_task_group() as tg:
                    for _ in range(8):
                        tg.start_soon(task, rnd.random() * 0.003)

        if backend == "uvloop":
            import uvloop

            anyio.run(main, backend="asyncio", backend_options={"loop_factory": uvloop.new_event_loop})
        else:
            anyio.run(main, backend=backend)
        st = c.statistics()
        assert (st.tokens_held, st.tasks_waiting) == (0, 0)
        assert s.available() == 2


@pytest.mark.parametrize("loop", _loops())
def test_asyncio_fd_watch_is_shared_and_left_clean(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaders of two Clients on one shared fd, on one loop, share one
    add_reader registration; a cancelled leader hands the lead on and
    leaves no registration behind."""
    from fastjob import _waiting

    monkeypatch.setenv("FASTJOB_WAIT_STRATEGY", "rwf-nowait")  # both read the shared fd
    with fastjob.Server(2) as s:
        a = fastjob.from_env(environ=s.env(), strict=True)
        b = fastjob.from_env(environ=s.env(), strict=True)
        assert a is not None and b is not None
        held = [s.client.try_acquire(), s.client.try_acquire()]  # the pool is empty now

        async def main() -> None:
            cancelled = asyncio.ensure_future(a.acquire())
            got_b = asyncio.ensure_future(b.acquire())
            got_a = asyncio.ensure_future(a.acquire())
            for _ in range(5):
                await asyncio.sleep(0)
            assert len(_waiting.AioFdWatch.waiting) == 1  # one registration for the fd
            cancelled.cancel()
            for _ in range(5):
                await asyncio.sleep(0)
            held.pop().release()  # the pool's byte: one of the two leaders gets it
            first = await asyncio.wait_for(asyncio.shield(asyncio.wait(
                [got_a, got_b], return_when=asyncio.FIRST_COMPLETED)), 10)
            (done,), _ = first
            done.result().release()  # back to the pool: the other one gets it
            other = got_b if done is got_a else got_a
            (await asyncio.wait_for(other, 10)).release()
            assert cancelled.cancelled()
            assert not _waiting.AioFdWatch.waiting

        _run(loop, main())
        for t in held:
            t.release()
        for c in (a, b):
            st = c.statistics()
            assert (st.tokens_held, st.tasks_waiting) == (0, 0)
            c.close()
        assert s.available() == 1
