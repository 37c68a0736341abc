"""Server.resize: growing, withholding, accounting; real processes hammering
the pool while it shrinks; waiters woken when it grows."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import anyio
import pytest

import fastjob

STYLES = ["pipe", "fifo"]


def _wait_for(cond: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.mark.parametrize("style", STYLES)
def test_shrink_and_grow_free_pool(style: str) -> None:
    with fastjob.Server(8, style=style) as s:
        s.resize(4)
        st = s.statistics()
        assert (st.jobs, st.effective, st.free, st.withheld, st.limited_by) == (4, 4, 3, 4, ())
        assert s.jobs == 4 and s.withheld == 4
        assert "-j4" in s.env()["MAKEFLAGS"]
        s.resize(11)  # gives the 4 withheld back, then writes 3 new ones
        st = s.statistics()
        assert (st.jobs, st.effective, st.free, st.withheld) == (11, 11, 10, 0)
        assert "-j11" in s.client.env()["MAKEFLAGS"]
        s.resize(1)
        assert s.statistics().free == 0 and s.withheld == 10
    # close: no TokenLeakWarning (filterwarnings=error): withheld count as present


def test_resize_rejects_bad_sizes() -> None:
    with fastjob.Server(3) as s:
        for bad in (0, -1):
            with pytest.raises(ValueError, match="at least one slot"):
                s.resize(bad)
        with pytest.raises(TypeError):
            s.resize(2.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            s.resize(True)
        assert s.jobs == 3 and s.available() == 2


def test_resize_beyond_pipe_capacity_is_a_clear_error_and_keeps_the_old_size() -> None:
    with fastjob.Server(4) as s:
        with pytest.raises(ValueError, match="holds only"):
            s.resize(1 << 30)
        assert s.jobs == 4
        assert s.available() == 3
        assert "-j4" in s.env()["MAKEFLAGS"]


def test_shrink_never_takes_a_held_token_and_withholds_it_on_return() -> None:
    with fastjob.Server(5) as s:
        held = [s.client.acquire_blocking() for _ in range(4)]  # implicit + 3 pool tokens
        assert s.available() == 1
        s.resize(2)  # wants 1 token in circulation: 3 held + 1 free
        assert s.withheld == 1 and s.available() == 0
        assert all(not t.released for t in held)
        for t in held[1:]:
            t.release()
        _wait_for(lambda: s.withheld == 3)
        assert s.available() == 1
        held[0].release()
        assert s.statistics().free == 1


def test_reconcile_and_close_count_withheld_tokens() -> None:
    with fastjob.Server(6) as s:
        s.resize(3)
        assert s.reconcile() == 0  # 2 in the pool + 3 withheld == 5: nothing missing
        assert s.available() == 2 and s.withheld == 3
        # a child that died holding a token: reconcile puts it back
        os.read(s._transport.read_fd, 1)
        assert s.reconcile() == 1
        assert s.available() == 2 and s.withheld == 3


def test_close_warns_when_a_token_is_really_missing_after_resize() -> None:
    s = fastjob.Server(6)
    s.resize(3)
    os.read(s._transport.read_fd, 1)  # lost by a "child"
    # the counts in the message are of the circulation (3 withheld): 1 of 2
    with pytest.warns(fastjob.TokenLeakWarning,
                      match=r"1 jobserver token.*\(pool 1, expected 2\)"):
        s.close()


HAMMER = r"""
import os, random, sys, time
import fastjob
log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
stop = sys.argv[2]
client = fastjob.from_env(strict=True, implicit_token=False)
me = str(os.getpid()).encode()
n = 0
while not os.path.exists(stop):
    try:
        tok = client.acquire_blocking(timeout=0.2)
    except TimeoutError:
        continue
    os.write(log, b"+" + me + b"\n")   # after the acquire
    time.sleep(random.random() * 0.004)
    os.write(log, b"-" + me + b"\n")   # before the release
    tok.release()
    n += 1
client.close()
print(n)
"""


def _max_holders(lines: list[bytes], start: int) -> tuple[int, int]:
    """(holders at line ``start``, max holders from there on) from the log."""
    holding: set[bytes] = set()
    at_start = peak = 0
    for i, line in enumerate(lines):
        if i == start:
            at_start = peak = len(holding)
        if line.startswith(b"+"):
            holding.add(line[1:])
        elif line.startswith(b"-"):
            holding.discard(line[1:])
        if i >= start:
            peak = max(peak, len(holding))
    return at_start, peak


@pytest.mark.parametrize("style", STYLES)
def test_resize_while_four_processes_hammer_the_pool(style: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"")
    stop = tmp_path / "stop"
    with fastjob.Server(6, style=style) as s:
        env = s.env()
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", HAMMER, str(log), str(stop)],
                env=env, pass_fds=s.pass_fds, stdout=subprocess.PIPE, text=True,
            )
            for _ in range(4)
        ]
        try:
            _wait_for(lambda: log.stat().st_size > 2000)
            for new in (3, 1, 2):
                s.resize(new)
                # settled: every token beyond new-1 is withheld (none taken from a holder)
                _wait_for(lambda: s._size.owed == 0)
                mark = len(log.read_bytes().splitlines())
                size_at_mark = log.stat().st_size
                _wait_for(lambda: log.stat().st_size > size_at_mark + 2000 or new == 1)
                if new == 1:
                    time.sleep(0.3)  # nobody may acquire at all now
                lines = log.read_bytes().splitlines()
                at_mark, peak = _max_holders(lines, mark)
                assert peak <= max(new - 1, at_mark) and at_mark <= new - 1, (new, at_mark, peak)
                if new == 1:
                    assert len(lines) - mark <= 1  # at most one '-' still in flight
                stats = s.statistics()
                assert stats.effective == new and stats.jobs == new
            s.resize(6)
            assert s.withheld == 0
        finally:
            stop.write_bytes(b"")
            outs = [p.communicate(timeout=30)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        assert all(int(o) > 0 for o in outs)
        # no token lost: every one is back, exactly
        assert s.available() == 5 and s.withheld == 0
        assert s.reconcile() == 0


@pytest.mark.anyio
@pytest.mark.parametrize("style", STYLES)
async def test_waiters_woken_when_the_pool_grows(anyio_backend: str, style: str) -> None:
    with fastjob.Server(3, style=style) as s:
        s.resize(1)  # only the implicit slot
        first = await s.client.acquire()
        got: list[fastjob.Token] = []

        async def waiter() -> None:
            got.append(await s.client.acquire())

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                tg.start_soon(waiter)
                await anyio.sleep(0.2)
                assert got == []  # no slot free: both wait
                s.resize(3)
        assert len(got) == 2
        for t in (first, *got):
            t.release()
        assert s.available() == 2


def test_waiters_woken_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> int:
        with fastjob.Server(2) as s:
            s.resize(1)
            first = await s.client.acquire()
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    got: list[fastjob.Token] = []

                    async def waiter() -> None:
                        got.append(await s.client.acquire())

                    tg.start_soon(waiter)
                    await anyio.sleep(0.1)
                    s.resize(2)
            first.release()
            got[0].release()
            return len(got)

    assert anyio.run(main, backend="asyncio",
                     backend_options={"loop_factory": uvloop.new_event_loop}) == 1


def test_grow_wakes_a_thread_waiting_in_acquire_blocking() -> None:
    import threading

    with fastjob.Server(2) as s:
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


def test_children_see_the_new_size(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import os; print(os.environ["MAKEFLAGS"])
    """)
    with fastjob.Server(4) as s:
        s.resize(7)
        out = subprocess.run([sys.executable, "-c", code], env=s.env(), pass_fds=s.pass_fds,
                             capture_output=True, text=True, check=True).stdout
        assert "-j7" in out
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            s.resize(2)


def test_a_forked_child_closing_its_copy_leaves_the_owner_working() -> None:
    from fastjob._control import request

    with fastjob.Server(4) as s:
        path = s.serve_control()
        s.resize(2)
        pid = os.fork()
        if pid == 0:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    s.close()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert request(path, {"op": "resize", "jobs": 3})["jobs"] == 3
        assert s.statistics().effective == 3 and s.available() == 2



def _hammer(s: fastjob.Server, code: str, log: Path, stop: Path,
            extra: list[list[str]]) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen([sys.executable, "-c", code, str(log), str(stop), *args],
                         env=s.env(), pass_fds=s.pass_fds, stdout=subprocess.PIPE, text=True)
        for args in extra
    ]


def _settled_peak(s: fastjob.Server, log: Path, new: int) -> int:
    """Wait until the shrink to ``new`` has settled and the hammering went on
    for a while; the most holders at once from then on (checked <= new - 1)."""
    _wait_for(lambda: s._size.owed == 0)
    mark = len(log.read_bytes().splitlines())
    size = log.stat().st_size
    if new > 1:
        _wait_for(lambda: log.stat().st_size > size + 3000)
    else:
        time.sleep(0.3)
    lines = log.read_bytes().splitlines()
    at_mark, peak = _max_holders(lines, mark)
    assert at_mark <= new - 1 and peak <= new - 1, (new, at_mark, peak)
    if new == 1:
        assert len(lines) - mark <= 1  # at most one '-' that was already under way
    return peak


@pytest.mark.parametrize("style", STYLES)
def test_rapid_resizes_under_a_hammer_lose_nothing(style: str, tmp_path: Path) -> None:
    """Hundreds of resizes, up and down, none waiting for the last to settle,
    while 4 processes hammer: the withholding never takes a held token, never
    loses or invents one, and the size asked for last is what holds."""
    import random

    rng = random.Random(16)
    log, stop = tmp_path / "log", tmp_path / "stop"
    log.write_bytes(b"")
    with fastjob.Server(6, style=style) as s:
        procs = _hammer(s, HAMMER, log, stop, [[] for _ in range(4)])
        try:
            _wait_for(lambda: log.stat().st_size > 2000)
            for _ in range(300):
                s.resize(rng.randint(1, 9))
                if rng.random() < 0.3:
                    time.sleep(rng.random() * 0.003)
            s.resize(3)
            _settled_peak(s, log, 3)
            s.resize(8)  # grown: the 4 processes can all hold at once again
            _wait_for(lambda: s._size.owed == 0)
            mark = len(log.read_bytes().splitlines())
            size = log.stat().st_size
            _wait_for(lambda: log.stat().st_size > size + 20000)
            _, peak = _max_holders(log.read_bytes().splitlines(), mark)
            assert 2 <= peak <= 4  # more than the old size allowed; never more than the 4
            s.resize(6)
        finally:
            stop.write_bytes(b"")
            outs = [p.communicate(timeout=30)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        # tokens once written stay (withheld when not wanted): total - 5 of them
        assert s.available() == 5 and s.withheld == s._size.total - 5
        assert s.reconcile() == 0


ASYNC_HAMMER = r"""
import os, random, sys, time
import anyio
import fastjob
log_path, stop, backend = sys.argv[1], sys.argv[2], sys.argv[3]
log = os.open(log_path, os.O_WRONLY | os.O_APPEND)
client = fastjob.from_env(strict=True, implicit_token=False)
count = [0]

async def worker(i: int) -> None:
    me = f"{os.getpid()}.{i}".encode()
    while not os.path.exists(stop):
        with anyio.move_on_after(0.2):
            tok = await client.acquire()
            try:
                os.write(log, b"+" + me + b"\n")
                await anyio.sleep(random.random() * 0.004)
            finally:
                os.write(log, b"-" + me + b"\n")  # before the release, cancelled or not
                tok.release()
            count[0] += 1

async def main() -> None:
    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(worker, i)

anyio.run(main, backend=backend)
client.close()
print(count[0])
"""


@pytest.mark.parametrize("style", STYLES)
def test_resize_while_asyncio_and_trio_processes_hammer(style: str, tmp_path: Path) -> None:
    """2 asyncio and 2 trio processes, 3 tasks each, waiting with await
    client.acquire() (cancelled every 0.2 s): shrinks settle with no more
    holders than the new size, growth is used, every token is back."""
    log, stop = tmp_path / "log", tmp_path / "stop"
    log.write_bytes(b"")
    with fastjob.Server(7, style=style) as s:
        kinds = ["asyncio", "trio", "asyncio", "trio"]
        procs = _hammer(s, ASYNC_HAMMER, log, stop, [[k] for k in kinds])
        try:
            _wait_for(lambda: log.stat().st_size > 3000)
            for new in (4, 2, 7, 3):
                s.resize(new)
                _settled_peak(s, log, new)
                st = s.statistics()
                assert (st.jobs, st.effective, st.withheld) == (new, new, 7 - new)
            s.resize(7)
        finally:
            stop.write_bytes(b"")
            outs = [p.communicate(timeout=30)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        assert all(int(o) > 0 for o in outs), outs
        assert s.available() == 6 and s.withheld == 0 and s.reconcile() == 0


def test_cancelled_async_waiters_wake_when_an_empty_pool_grows(tmp_path: Path) -> None:
    """Shrink to 1 (no token in circulation) for a second while every
    process's waiters time out and retry, then grow: every process must
    acquire again."""
    log, stop = tmp_path / "log", tmp_path / "stop"
    log.write_bytes(b"")
    with fastjob.Server(7) as s:
        kinds = ["asyncio", "trio", "asyncio", "trio"]
        procs = _hammer(s, ASYNC_HAMMER, log, stop, [[k] for k in kinds])
        try:
            _wait_for(lambda: log.stat().st_size > 3000)
            s.resize(1)
            _wait_for(lambda: s._size.owed == 0)
            time.sleep(1.0)
            mark = len(log.read_bytes().splitlines())
            s.resize(7)
            pids = {str(p.pid).encode(): kind for p, kind in zip(procs, kinds)}

            def seen() -> set[bytes]:
                return {ln[1:].split(b".")[0] for ln in log.read_bytes().splitlines()[mark:]}

            try:
                _wait_for(lambda: seen() >= set(pids), timeout=10)
            except AssertionError:
                raise AssertionError(("not woken", sorted(pids[p] for p in set(pids) - seen()),
                                      s.statistics())) from None
        finally:
            stop.write_bytes(b"")
            outs = [p.communicate(timeout=30)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
