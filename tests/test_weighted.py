"""Weighted and elastic acquire (issue 17 items 1-4) and TokenSet."""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import anyio
import pytest

import fastjob
from fastjob import TokenSet

from conftest import clean_env


def _wait_until(cond: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


async def _await_until(cond: object, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not cond():  # type: ignore[operator]
            await anyio.sleep(0.005)


# -- TokenSet ---------------------------------------------------------------------
def test_tokenset_len_iter_pop_release() -> None:
    with fastjob.Server(4) as s:
        ts = s.client.acquire_many_blocking(3)
        assert isinstance(ts, TokenSet) and len(ts) == 3
        toks = list(ts)
        assert sum(t.implicit for t in toks) == 1  # the implicit one counts as one
        assert s.available() == 1
        one = ts.pop()
        assert len(ts) == 2 and not one.released
        ts.release()
        ts.release()  # idempotent
        assert len(ts) == 0 and ts.released and s.available() == 2 - int(one.implicit)
        one.release()
        assert s.available() == 3
        with pytest.raises(KeyError):
            ts.pop()
        with s.client.acquire_many_blocking(2) as ts2:
            assert len(ts2) == 2
        assert s.available() == 3 and s.client.statistics().tokens_held == 0


def test_tokenset_release_from_many_threads_is_once() -> None:
    with fastjob.Server(4) as s:
        ts = s.client.acquire_many_blocking(4)
        threads = [threading.Thread(target=ts.release) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert s.available() == 3 and s.client.statistics().tokens_held == 0


def test_tokenset_garbage_collected_is_released_with_warning() -> None:
    with fastjob.Server(3) as s:
        ts = s.client.acquire_many_blocking(3)
        assert s.available() == 0
        with pytest.warns(fastjob.TokenLeakWarning, match="TokenSet"):
            del ts
            gc.collect()
        assert s.available() == 2 and s.client.statistics().tokens_held == 0


def test_weight_checks() -> None:
    with fastjob.Server(3) as s:
        c = s.client
        with pytest.raises(ValueError, match="only 3"):
            c.acquire_many_blocking(4)
        with pytest.raises(ValueError, match="only 3"):
            c.acquire_many(4)
        with pytest.raises(ValueError):
            c.acquire_many_blocking(0)
        with pytest.raises(TypeError):
            c.acquire_many_blocking(2.0)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            c.acquire_up_to(2, min=3)
        with pytest.raises(ValueError):
            c.acquire_many_blocking(2, timeout=float("nan"))


def test_acquire_many_blocking_timeout_hands_gathered_slots_back() -> None:
    with fastjob.Server(3) as s:
        c = s.client
        hold = c.try_acquire()
        assert hold is not None and hold.implicit
        with pytest.raises(TimeoutError):
            c.acquire_many_blocking(3, timeout=0.2)  # gathers 2, never the 3rd
        assert s.available() == 2 and c.statistics().tokens_held == 1
        assert c.statistics().tasks_waiting == 0
        hold.release()


def test_weighted_thread_waiter_is_served_in_order() -> None:
    with fastjob.Server(4) as s:
        c = s.client
        held = [c.try_acquire() for _ in range(4)]
        order: list[str] = []

        def waiter(name: str, n: int) -> None:
            ts = c.acquire_many_blocking(n, timeout=30)
            order.append(name)
            time.sleep(0.02)
            ts.release()

        threads = []
        for i, (name, n) in enumerate([("a", 1), ("heavy", 3), ("b", 1), ("c", 1)]):
            th = threading.Thread(target=waiter, args=(name, n))
            th.start()
            threads.append(th)
            _wait_until(lambda: c.statistics().tasks_waiting == i + 1)
        for t in held:
            assert t is not None
            t.release()
            time.sleep(0.01)
        for th in threads:
            th.join(30)
        assert order[:2] == ["a", "heavy"]  # b and c waited behind the heavy one
        assert sorted(order) == ["a", "b", "c", "heavy"]
        assert s.available() == 3


def test_try_acquire_up_to() -> None:
    with fastjob.Server(4) as s:
        c = s.client
        ts = c.try_acquire_up_to(10)
        assert len(ts) == 4 and s.available() == 0
        assert len(c.try_acquire_up_to(2)) == 0  # nothing free: an empty set
        ts.release()
        assert s.available() == 3


# -- async --------------------------------------------------------------------------
async def test_acquire_many_and_up_to(anyio_backend: str) -> None:
    with fastjob.Server(4) as s:
        c = s.client
        ts = await c.acquire_many(2)
        assert len(ts) == 2
        more = await c.acquire_up_to(4, min=1)  # what is free now: the other 2
        assert len(more) == 2 and s.available() == 0
        ts.release()
        more.release()
        async with c.acquire_many(3) as ts3:
            assert len(ts3) == 3
        async with await c.acquire_up_to(3) as ts4:
            assert len(ts4) == 3
        assert s.available() == 3 and c.statistics().tokens_held == 0


async def test_weighted_waiter_fcfs_and_not_starved(anyio_backend: str) -> None:
    with fastjob.Server(4) as s:
        c = s.client
        held = c.try_acquire_up_to(4)
        order: list[str] = []

        async def job(name: str, n: int) -> None:
            async with c.acquire_many(n):
                order.append(name)
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            for i, (name, n) in enumerate([("a", 1), ("heavy", 3), ("b", 1), ("c", 1)]):
                tg.start_soon(job, name, n)
                await _await_until(lambda: c.statistics().tasks_waiting == i + 1)
            # weight-1 newcomers keep arriving: the heavy waiter is still served
            for i in range(6):
                tg.start_soon(job, f"late{i}", 1)
            await anyio.sleep(0.02)
            held.release()
        assert order.index("heavy") < order.index("b") < order.index("c")
        assert all(order.index("heavy") < order.index(f"late{i}") for i in range(6))
        assert s.available() == 3 and c.statistics().tokens_held == 0


async def test_cancelled_weighted_waiter_hands_gathered_slots_on(anyio_backend: str) -> None:
    with fastjob.Server(4) as s:
        c = s.client
        held = c.try_acquire_up_to(4)
        tokens = [held.pop() for _ in range(4)]
        got: list[str] = []

        async def light(name: str) -> None:
            async with c.token():
                got.append(name)
                await anyio.sleep(1)

        heavy_scope = anyio.CancelScope()

        async def heavy() -> None:
            with heavy_scope:
                await c.acquire_many(4)
                got.append("heavy")

        async with anyio.create_task_group() as tg:
            tg.start_soon(heavy)
            await _await_until(lambda: c.statistics().tasks_waiting == 1)
            tg.start_soon(light, "b")
            tg.start_soon(light, "c")
            await _await_until(lambda: c.statistics().tasks_waiting == 3)
            tokens[0].release()  # the heavy waiter gathers these two ...
            tokens[1].release()
            await anyio.sleep(0.05)
            assert got == []
            heavy_scope.cancel()  # ... and hands them to b and c
            await _await_until(lambda: sorted(got) == ["b", "c"])
            tg.cancel_scope.cancel()
        for t in tokens[2:]:
            t.release()
        assert s.available() == 3 and c.statistics().tokens_held == 0
        assert c.statistics().tasks_waiting == 0


CHURN = r"""
import os, sys, time, random
import fastjob
c = fastjob.from_env(strict=True)
end = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < end:
    try:
        ts = c.acquire_many_blocking(random.choice([1, 2, 3]), timeout=random.random() * 0.01)
    except TimeoutError:
        continue
    n += len(ts)
    ts.release()
c.close()
print(n)
"""


async def test_weighted_and_elastic_cancellation_storm_across_processes(anyio_backend: str) -> None:
    with fastjob.Server(4) as s:
        c = s.client
        env = clean_env(**s.env(clean_env()))
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHURN), "2.0"],
            env=env,
            pass_fds=s.pass_fds,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        rng = random.Random(17)
        active = 0
        peak = 0
        served = 0

        async def worker(i: int) -> None:
            nonlocal active, peak, served
            kind = rng.choice(["many", "up_to", "one"])
            with anyio.move_on_after(rng.random() * 0.02):
                if kind == "many":
                    ts = await c.acquire_many(rng.choice([1, 2, 3]))
                elif kind == "up_to":
                    ts = await c.acquire_up_to(3, min=rng.choice([1, 2]))
                else:
                    ts = TokenSet([await c.acquire()])
                with ts:
                    n = len(ts)
                    active += n
                    peak = max(peak, active)
                    served += 1
                    try:
                        await anyio.sleep(rng.random() * 0.002)
                    finally:
                        active -= n

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(600):
                    tg.start_soon(worker, i)
                    if i % 10 == 0:
                        await anyio.sleep(0.001)
        out, err = await anyio.to_thread.run_sync(child.communicate)
        assert child.returncode == 0, err
        assert served > 0 and int(out) > 0
        assert peak <= 4  # never more slots than the pool has
        st = c.statistics()
        assert st.tokens_held == 0 and st.tasks_waiting == 0
        assert s.available() == 3  # no token lost, none invented


async def test_jobgroup_weight(anyio_backend: str) -> None:
    with fastjob.Server(3) as s:
        active = 0
        peak = 0

        async def job(w: int) -> None:
            nonlocal active, peak
            active += w
            peak = max(peak, active)
            await anyio.sleep(0.005)
            active -= w

        async with fastjob.JobGroup(s) as group:
            for i in range(12):
                if i % 2:
                    await group.spawn(job, 2, weight=2)
                else:
                    group.start_soon(job, 1, weight=1)
            group.start_soon(job, 3, weight=3)
        assert peak <= 3
        assert s.available() == 2 and s.client.statistics().tokens_held == 0
        async with fastjob.JobGroup(s) as group:
            with pytest.raises(ValueError, match="only 3"):
                group.start_soon(job, 4, weight=4)
            with pytest.raises(ValueError, match="only 3"):
                await group.spawn(job, 4, weight=4)


# -- a Client garbage collected without close() --------------------------------------
def test_client_garbage_collected_closes_its_fds_with_resource_warning() -> None:
    with fastjob.Server(3) as s:
        c = fastjob.from_env(s.env(clean_env()), strict=True)
        assert c is not None
        rfd = c._t.read_fd
        assert rfd not in s.pass_fds  # its own private description
        os.fstat(rfd)
        with pytest.warns(ResourceWarning, match="unclosed"):
            del c
            gc.collect()
        with pytest.raises(OSError):
            os.fstat(rfd)
