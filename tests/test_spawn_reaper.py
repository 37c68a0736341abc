"""The asyncio fast path's child waits: one epoll set per loop (``_spawn.Reaper``)
holding every running child's pidfd.  Hostile cases: cancellation at the
wait, a child that forks and outlives, a callback that raises, many children
at once, the epoll set's fd when the loop goes away; run on asyncio, uvloop
and trio (trio waits on the pidfd itself), native and pure core."""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from typing import Any

import anyio
import pytest

import fastjob
from conftest import backend_with_uvloop as anyio_backend  # noqa: F401 - asyncio, uvloop, trio
from fastjob import _spawn

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not _spawn._probe(), reason="no posix_spawn + pidfd here"),
]


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_spawn, "_fast", True)


def _loop_reaper() -> _spawn.Reaper | None:
    """The running asyncio loop's reaper (None on trio)."""
    if sys.modules.get("asyncio") is None:
        return None
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return _spawn.reaper(loop)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


async def test_cancel_at_the_wait_stops_group_and_forgets_the_pidfd() -> None:
    with fastjob.Server(jobs=2) as server:
        t0 = time.monotonic()
        with anyio.move_on_after(0.3) as scope:
            await fastjob.run_process(["sleep", "30"], client=server.client)
        assert scope.cancelled_caught
        assert time.monotonic() - t0 < 10
        r = _loop_reaper()
        if r is not None:
            assert len(r) == 0  # the cancelled wait left nothing armed
        assert server.client.statistics().tokens_held == 0
        # and the next child is waited for normally
        done = await fastjob.run_process(["true"], client=server.client)
        assert done.returncode == 0


async def test_cancel_kills_a_child_that_ignores_sigterm_and_its_grandchild(tmp_path: Any) -> None:
    pidfile = tmp_path / "grandchild"
    script = f"trap '' TERM; sleep 30 & echo $! > {pidfile}; wait"
    with fastjob.Server(jobs=1) as server:
        with anyio.move_on_after(0.5):
            await fastjob.run_process(["sh", "-c", script], client=server.client)
        grandchild = int(pidfile.read_text())
        # the token is released only after the whole group is gone
        assert not _alive(grandchild)
        assert server.client.statistics().tokens_held == 0


async def test_child_that_forks_and_outlives(tmp_path: Any) -> None:
    """The leader's exit ends the wait; the grandchild keeps running (as with
    subprocess) and holds the captured stdout without blocking the result."""
    with fastjob.Server(jobs=2) as server:
        done = await fastjob.run_process(
            ["sh", "-c", "sleep 30 & echo $!"], client=server.client
        )
        grandchild = int(done.stdout.split()[0])
        try:
            assert _alive(grandchild)
            r = _loop_reaper()
            if r is not None:
                assert len(r) == 0
            # a second child is not confused with the first one's leftovers
            again = await fastjob.run_process(["sh", "-c", "echo second"], client=server.client)
            assert again.stdout == b"second\n"
        finally:
            os.kill(grandchild, signal.SIGKILL)


async def test_many_children_at_once_share_one_registration() -> None:
    with fastjob.Server(jobs=8) as server:
        codes: list[int] = []

        async def one(i: int) -> None:
            done = await fastjob.run_process(
                ["sh", "-c", f"exit {i % 3}"], client=server.client, check=False
            )
            codes.append(done.returncode)

        async with fastjob.JobGroup(server.client) as group:
            for i in range(40):
                await group.spawn(one, i)
        assert sorted(codes) == sorted(i % 3 for i in range(40))
        r = _loop_reaper()
        if r is not None:
            assert len(r) == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_callback_that_raises_goes_to_the_exception_handler() -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    try:
        r = _spawn.reaper(loop)
        got: list[int] = []
        pids = [os.posix_spawn("/bin/sh", ["sh", "-c", "exit 0"], dict(os.environ)) for _ in range(3)]
        fds = [os.pidfd_open(p) for p in pids]
        all_done = loop.create_future()

        def bad() -> None:
            raise RuntimeError("callback failed")

        def good(i: int) -> None:
            got.append(i)
            if len(got) == 2:
                all_done.set_result(None)

        r.watch(fds[0], bad)
        r.watch(fds[1], lambda: good(1))
        r.watch(fds[2], lambda: good(2))
        with anyio.fail_after(10):
            await all_done
            while not seen:
                await asyncio.sleep(0.01)
        assert sorted(got) == [1, 2]
        assert isinstance(seen[0]["exception"], RuntimeError)
        assert len(r) == 0
    finally:
        loop.set_exception_handler(None)
        for p in pids:
            os.waitpid(p, 0)
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_forget_before_exit_never_fires() -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    r = _spawn.reaper(loop)
    pid = os.posix_spawn("/bin/sleep", ["sleep", "0.2"], dict(os.environ))
    fd = os.pidfd_open(pid)
    fired: list[int] = []
    r.watch(fd, lambda: fired.append(1))
    r.forget(fd)
    r.forget(fd)  # twice: a no-op
    os.waitpid(pid, 0)
    await asyncio.sleep(0.05)
    assert fired == [] and len(r) == 0
    # the fd can be watched again (forget unregistered it)
    r.watch(fd, lambda: fired.append(2))
    with anyio.fail_after(5):
        while not fired:
            await asyncio.sleep(0.01)
    assert fired == [2]
    os.close(fd)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_epoll_set_closed_when_the_loop_goes() -> None:
    async def main() -> None:
        with fastjob.Server(jobs=1) as server:
            await fastjob.run_process(["true"], client=server.client)

    anyio.run(main)
    gc.collect()
    before = _open_fds()
    for _ in range(5):
        anyio.run(main)
    gc.collect()
    assert _open_fds() <= before


def test_forked_child_gets_its_own_reaper() -> None:
    import asyncio

    async def parent() -> None:
        loop = asyncio.get_running_loop()
        r = _spawn.reaper(loop)
        pid = os.fork()
        if pid == 0:  # the child: same loop object, a new epoll set
            code = 1
            try:
                code = 0 if _spawn.reaper(loop) is not r else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _spawn.reaper(loop) is r

    asyncio.run(parent())
