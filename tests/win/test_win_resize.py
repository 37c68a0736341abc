"""Server.resize of a real Windows semaphore pool (issue 16): growth
releases counts, a shrink withholds them as holders return them (the
server's settle thread waits in the kernel, no poll on Windows), children
(Windows Python processes, make.exe for Windows) see the new size, and every
count is back at close.  Runs in the Windows CPython, native and pure."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import anyio
import pytest

import fastjob

from .conftest import JOB_PY, JOB_SECONDS, max_overlap, read_stamps, windows_make, windows_only

pytestmark = windows_only
TIMEOUT = 120
PY = Path(sys.executable).as_posix()


def _wait_for(cond: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_shrink_and_grow_a_free_pool() -> None:
    with fastjob.Server(8) as s:
        assert s.style == "sem"
        s.resize(4)
        st = s.statistics()
        assert (st.jobs, st.effective, st.free, st.withheld, st.limited_by) == (4, 4, 3, 4, ())
        assert "-j4" in s.env()["MAKEFLAGS"]
        s.resize(11)  # the 4 withheld back, then 3 new counts: above make's maximum
        st = s.statistics()
        assert (st.jobs, st.effective, st.free, st.withheld) == (11, 11, 10, 0)
        s.resize(1)
        assert s.statistics().free == 0 and s.withheld == 10
        assert s.reconcile() == 0
        s.resize(3)
        assert s.available() == 2 and s.withheld == 8


CHILD_HOLDS = """\
import sys, time, fastjob
c = fastjob.from_env(strict=True, implicit_token=False)
toks = [c.acquire_blocking(timeout=60) for _ in range(int(sys.argv[1]))]
print("holding", flush=True)
sys.stdin.readline()
for t in toks:
    t.release()
c.close()
"""


def test_shrink_withholds_tokens_a_child_returns() -> None:
    with fastjob.Server(4) as s:
        with subprocess.Popen([sys.executable, "-c", CHILD_HOLDS, "3"], env=s.env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None and child.stdin is not None
            try:
                assert child.stdout.readline().strip() == "holding"
                assert s.available() == 0
                s.resize(2)  # owes 2; never takes them from the child
                assert s.withheld == 0 and s._size.owed == 2
                child.stdin.write("\n")
                child.stdin.flush()
                assert child.wait(TIMEOUT) == 0
                _wait_for(lambda: s.withheld == 2)  # taken by the kernel wait as they came back
                assert s.available() == 1 and s._size.owed == 0
            finally:
                if child.poll() is None:
                    child.kill()

HAMMER = r"""
import os, random, sys, time
import fastjob
out, stop = sys.argv[1], sys.argv[2]
client = fastjob.from_env(strict=True, implicit_token=False)
spans = []
while not os.path.exists(stop):
    try:
        tok = client.acquire_blocking(timeout=0.2)
    except TimeoutError:
        continue
    a = time.time()                       # after the acquire
    time.sleep(random.random() * 0.004)
    spans.append(f"{a!r} {time.time()!r}")  # before the release
    tok.release()
client.close()
with open(out, "w") as f:
    f.write("\n".join(spans))
print(len(spans))
"""


def _clipped(spans: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    return [(max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi]


def test_resize_while_four_processes_hammer_the_pool(tmp_path: Path) -> None:
    """Four Windows processes acquire and release as fast as they can while
    the pool shrinks and grows.  Each span is stamped inside the real holding
    (after the acquire, before the release), so spans that overlap were held
    at once: after each shrink has settled, never more than the new size."""
    stop = tmp_path / "stop"
    windows: list[tuple[int, float, float]] = []  # (size, settled at, next resize at)
    with fastjob.Server(6) as s:
        env = s.env()
        procs = [subprocess.Popen([sys.executable, "-c", HAMMER, str(tmp_path / f"{i}.log"),
                                   str(stop)], env=env, stdout=subprocess.PIPE, text=True)
                 for i in range(4)]
        try:
            time.sleep(3.0)  # the children start (slowly under wine) and hammer
            for new in (3, 1, 2, 5, 1):
                s.resize(new)
                _wait_for(lambda: s._size.owed == 0)
                settled = time.time()
                time.sleep(1.0)
                st = s.statistics()
                assert st.effective == new and st.jobs == new and st.withheld == 6 - new
                windows.append((new, settled, time.time()))
            s.resize(6)
            assert s.withheld == 0
        finally:
            stop.write_text("")
            outs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        assert all(int(o) > 0 for o in outs), outs
        assert s.available() == 5 and s.withheld == 0 and s.reconcile() == 0
    spans = []
    for i in range(4):
        for line in (tmp_path / f"{i}.log").read_text().split("\n"):
            if line:
                a, b = line.split()
                spans.append((float(a), float(b)))
    for new, lo, hi in windows:
        inside = _clipped(spans, lo, hi)
        assert max_overlap(inside) <= new - 1, (new, inside)
        if new == 1:
            assert inside == []
    assert max_overlap(spans) >= 3  # they really hammered side by side at -j6


@pytest.mark.anyio
async def test_waiters_woken_when_the_pool_grows(anyio_backend: object) -> None:
    with fastjob.Server(3) as s:
        s.resize(1)
        first = await s.client.acquire()
        got: list[fastjob.Token] = []

        async def waiter() -> None:
            got.append(await s.client.acquire())

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                tg.start_soon(waiter)
                await anyio.sleep(0.3)
                assert got == []
                s.resize(3)
        assert len(got) == 2
        for t in (first, *got):
            t.release()
        with anyio.fail_after(TIMEOUT):
            while s.available() != 2:
                await anyio.sleep(0.05)


def test_grow_wakes_a_thread_waiting_in_acquire_blocking() -> None:
    with fastjob.Server(2) as s:
        s.resize(1)
        first = s.client.acquire_blocking()
        box: list[fastjob.Token] = []
        t = threading.Thread(target=lambda: box.append(s.client.acquire_blocking(timeout=60)))
        t.start()
        time.sleep(0.2)
        assert not box
        s.resize(2)
        t.join(TIMEOUT)
        assert len(box) == 1
        box[0].release()
        first.release()


def test_close_notices_a_count_missing_after_resize() -> None:
    s = fastjob.Server(5)
    s.resize(3)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import fastjob, os
        c = fastjob.from_env(strict=True, implicit_token=False)
        held = c.try_acquire()
        assert held is not None
        os._exit(0)   # dies holding it
    """)], env=s.env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.close()
    msgs = [str(w.message) for w in caught if issubclass(w.category, fastjob.TokenLeakWarning)]
    assert len(msgs) == 1 and "1 jobserver token(s)" in msgs[0], msgs


def test_make_for_windows_in_a_grown_then_shrunk_pool(tmp_path: Path) -> None:
    """make.exe joins a pool that grew beyond its first size (make's own
    semaphores have maximum == initial count; fastjob's does not refuse
    make's releases) and then shrank: 8 recipes, at most 2 at once, and
    the pool exactly whole afterwards."""
    (tmp_path / "job.py").write_text(JOB_PY)
    jobs = [f"j{i}" for i in range(8)]
    rules = "".join(f"{j}:\n\t{PY} job.py {j}.stamp {JOB_SECONDS}\n" for j in jobs)
    (tmp_path / "Makefile").write_text(f"all: {' '.join(jobs)}\n{rules}")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL")}
    with fastjob.Server(2) as s:
        s.resize(6)
        s.resize(2)
        done = subprocess.run([windows_make(), "--no-print-directory"], env=s.env(env),
                              cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "warning" not in done.stderr.lower(), done.stderr
        assert s.available() == 1 and s.withheld == 4 and s.reconcile() == 0
    spans = read_stamps(tmp_path)
    assert len(spans) == 8 and max_overlap(spans) == 2


def test_governor_limits_say_they_are_unsupported_here() -> None:
    """Windows offers none of the governor's signals: said once, ignored,
    the pool at full size."""
    with pytest.warns(fastjob.JobserverWarning, match="ignored"):
        s = fastjob.Server(3, limits=fastjob.Limits(load_average=1.0, min_free_memory="1G"))
    with s:
        st = s.statistics()
        assert (st.effective, st.withheld, st.limited_by) == (3, 0, ())


def test_the_rust_crate_in_a_grown_and_a_shrunk_pool(tmp_path: Path) -> None:
    """The jobserver crate (cargo's, rustc's) as a client: a pool created at
    2 slots and grown to 5 (its releases go above the first size, which a
    make-style maximum would refuse), then shrunk to 3."""
    from .test_win_rust import rust_peer

    peer = rust_peer()
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL")}
    with fastjob.Server(2) as s:
        for size in (5, 3):
            s.resize(size)
            out = tmp_path / str(size)
            out.mkdir()
            done = subprocess.run([peer, "client", "10", str(out)], env=s.env(env),
                                  capture_output=True, text=True, timeout=TIMEOUT,
                                  stdin=subprocess.DEVNULL)
            assert done.returncode == 0, done.stdout + done.stderr
            assert s.available() == size - 1 and s.reconcile() == 0
            spans = read_stamps(out)
            assert len(spans) == 10 and max_overlap(spans) == size, (size, spans)
