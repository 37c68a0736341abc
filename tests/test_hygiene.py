"""Resource hygiene: no fd leaks over 10,000 open/close cycles (counted in
/proc/self/fd), none after failed opens, no thread left behind by the
reader-thread strategy, and no ResourceWarning (a child runs a workload
under ``-W error``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings

import anyio
import pytest

import fastjob

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")

CYCLES = int(os.environ.get("FASTJOB_HYGIENE_CYCLES", "10000"))


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def record(figures: dict[str, object]) -> None:
    path = os.environ.get("FASTJOB_FIGURES_FILE")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(figures) + "\n")


def test_no_fd_leak_over_open_close_cycles() -> None:
    before = open_fds()
    t0 = time.monotonic()
    for i in range(CYCLES):
        style = "fifo" if i % 10 == 0 else "pipe"
        with fastjob.Server(2, style=style) as server:
            client = fastjob.from_env(environ=server.env(), strict=True)
            assert client is not None
            tok = client.try_acquire()  # the pool's token
            assert tok is not None
            tok.release()
            client.close()
            server.client.try_acquire().release()  # type: ignore[union-attr]
    elapsed = time.monotonic() - t0
    after = open_fds()
    assert after == before, f"leaked fds: {sorted(after - before)}"
    record({"test": "hygiene-open-close", "cycles": CYCLES, "fds_leaked": 0,
            "seconds": round(elapsed, 2)})


def test_no_fd_leak_after_failed_opens() -> None:
    """Every way of failing to join leaves no fd behind (a leaked writer
    would even make a stale FIFO look alive)."""
    with tempfile.TemporaryDirectory() as tmp:
        stale = os.path.join(tmp, "stale.fifo")
        os.mkfifo(stale, 0o600)
        r, w = os.pipe()
        r2, w2 = os.pipe()
        bad = [
            f"--jobserver-auth=fifo:{stale}",
            f"--jobserver-auth=fifo:{tmp}",
            f"--jobserver-auth=fifo:{tmp}/missing",
            f"--jobserver-auth={w},{r}",
            f"--jobserver-auth={r},{w2}",
            "--jobserver-auth=999,998",
            "--jobserver-auth=x,y",
        ]
        try:
            before = open_fds()
            for _ in range(300):
                for value in bad:
                    with pytest.raises(fastjob.JobserverError):
                        fastjob.from_env(environ={"MAKEFLAGS": value}, strict=True)
            assert open_fds() == before
        finally:
            for fd in (r, w, r2, w2):
                os.close(fd)


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_no_fd_leak_from_waiting(style: str) -> None:
    """Sync waits that time out and async waits that are cancelled (each
    uses wake-up fds) leave nothing behind."""
    with fastjob.Server(1, style=style) as server:
        c = server.client
        with c.acquire_blocking() as implicit:
            assert implicit.implicit
            # each thread keeps one wake pipe for its blocking waits: make it
            # exist before counting (it is reused, not leaked per wait)
            with pytest.raises(TimeoutError):
                c.acquire_blocking(timeout=0.001)
            before = open_fds()
            for _ in range(300):
                with pytest.raises(TimeoutError):
                    c.acquire_blocking(timeout=0.0001)

            async def cancelled() -> None:
                for _ in range(100):
                    with anyio.move_on_after(0.0005):
                        await c.acquire()

            anyio.run(cancelled, backend="asyncio")
            anyio.run(cancelled, backend="trio")
            assert open_fds() == before


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_reader_thread_strategy_leaves_no_thread(
    style: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTJOB_WAIT_STRATEGY", "thread")
    before_threads = set(threading.enumerate())
    before_fds = open_fds()
    for _ in range(50):
        with fastjob.Server(2, style=style) as server:
            client = fastjob.from_env(environ=server.env(), strict=True)
            assert client is not None
            assert client.statistics().wait_strategy == "thread"
            held = client.acquire_blocking(timeout=5)  # starts the reader thread
            with pytest.raises(TimeoutError):
                client.acquire_blocking(timeout=0.001)
            held.release()
            client.close()
    # The reader threads are joined at close, not left to die later.  (The
    # pure core's reaper is one per process, started by the first Client.)
    reaper = {t for t in threading.enumerate() if t.name == "fastjob-reaper"}
    assert set(threading.enumerate()) - reaper == before_threads - reaper
    assert not [t for t in threading.enumerate() if t.name == "fastjob-reader"]
    assert open_fds() == before_fds


WORKLOAD = textwrap.dedent(
    """
    import gc, os, sys, anyio, fastjob, warnings
    for style in ("pipe", "fifo"):
        for strategy in sys.argv[1].split(","):
            os.environ["FASTJOB_WAIT_STRATEGY"] = strategy
            for _ in range(15):
                with fastjob.Server(3, style=style) as s:
                    c = fastjob.from_env(environ=s.env(), strict=True)
                    toks = [c.acquire_blocking(timeout=5) for _ in range(2)]
                    for t in toks:
                        t.release()
                    async def grab():
                        async with c.token():
                            await anyio.sleep(0.0005)
                    async def main():
                        with anyio.move_on_after(0.001):
                            async with anyio.create_task_group() as tg:
                                for _ in range(4):
                                    tg.start_soon(grab)
                    anyio.run(main)
                    c.close()
                    try:
                        fastjob.from_env(environ={"MAKEFLAGS": "--jobserver-auth=9999,9998"},
                                         strict=True)
                    except fastjob.JobserverError:
                        pass
    gc.collect()
    print("ok")
    """
)


def _workload(strategies: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FASTJOB_WAIT_STRATEGY"}
    return subprocess.run(
        [sys.executable, "-W", "error", "-X", "tracemalloc=5", "-c", WORKLOAD, strategies],
        capture_output=True, text=True, timeout=300, env=env,
    )


def test_no_resource_warning_anywhere() -> None:
    """A workload under -W error (ResourceWarning and TokenLeakWarning become
    errors; in __del__ they are printed as unraisable): nothing on stderr, and
    the child exits 0.  (Not -X dev: asyncio debug mode reports callbacks
    slower than 100 ms, which a loaded CI machine produces on its own.)"""
    out = _workload("")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
    # Tokens not returned in that workload would be TokenLeakWarnings: errors too.
    assert out.stderr == "", out.stderr


def test_no_resource_warning_under_the_thread_strategy() -> None:
    """The same workload under the reader-thread strategy: a token the
    reader thread has read when its waiter is cancelled, or when close()
    runs, goes to the next waiter or back to the pool at once, never through
    the garbage collector (a TokenLeakWarning: an error here)."""
    out = _workload("thread")
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr


def test_suite_filters_resource_warning_as_error() -> None:
    """This suite runs with warnings as errors (pyproject filterwarnings), so
    a ResourceWarning in any test fails it."""
    with pytest.raises(ResourceWarning):
        warnings.warn("x", ResourceWarning)
