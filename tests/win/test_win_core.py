"""fastjob on real Windows semaphores: the fixes of issue 14, items 2 to 7.

Each test runs in the Windows CPython (under wine in scripts/test_windows.sh,
natively in cibuildwheel's Windows test step), on the native extension and on
the pure-Python package (FASTJOB_NO_EXTENSIONS=1).
"""

from __future__ import annotations

import os
import signal
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
from fastjob import _io
from fastjob._core.sem import SemaphoreTransport

from .conftest import windows_only

pytestmark = windows_only
TIMEOUT = 60


def run_py(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)


def sem_of(client: fastjob.Client) -> SemaphoreTransport:
    t = client._t
    assert isinstance(t, SemaphoreTransport)
    return t


# -- item 4: the pure-Python package imports on Windows ------------------------------
def test_pure_package_imports_and_uses_ctypes() -> None:
    env = dict(os.environ, FASTJOB_NO_EXTENSIONS="1")
    done = run_py("""
        import fastjob, fastjob._io_py
        from fastjob._core import sem
        with fastjob.Server(3) as s:
            assert s.style == "sem"
            print(fastjob.NATIVE, type(sem.semaphore_api()).__name__, s.available())
    """, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "_CtypesAPI", "2"]


def test_this_run_uses_the_build_it_asked_for() -> None:
    """The native run really is native (and the pure run pure)."""
    pure = os.environ.get("FASTJOB_NO_EXTENSIONS", "") not in ("", "0")
    assert fastjob.NATIVE is not pure


# -- item 2: fastjob run / parallel import without signal.SIGHUP ---------------------
def test_cli_run_and_parallel_import_without_sighup() -> None:
    assert not hasattr(signal, "SIGHUP")
    done = run_py("import fastjob.cli.run, fastjob.cli.parallel; print(fastjob.cli.run.FORWARDED)")
    assert done.returncode == 0, done.stderr
    assert "SIGINT" in done.stdout and "SIGHUP" not in done.stdout
    for sub in ("run", "parallel"):
        helped = subprocess.run([sys.executable, "-m", "fastjob", sub, "--help"],
                                capture_output=True, text=True, timeout=TIMEOUT,
                                stdin=subprocess.DEVNULL)
        assert helped.returncode == 0, helped.stderr
        assert f"usage: fastjob {sub}" in helped.stdout


# -- item 3: acquire_blocking waits in the kernel ------------------------------------
def test_acquire_blocking_waits_for_a_release() -> None:
    with fastjob.Server(3) as server:
        c = server.client
        held = [c.try_acquire() for _ in range(3)]
        assert all(held) and c.try_acquire() is None
        with pytest.raises(TimeoutError):
            c.acquire_blocking(timeout=0.2)  # nothing comes back
        last = held.pop()
        assert last is not None
        timer = threading.Timer(0.2, last.release)
        timer.start()
        try:
            tok = c.acquire_blocking(timeout=TIMEOUT)
        finally:
            timer.join()
        tok.release()
        for t in held:
            assert t is not None
            t.release()
        assert server.available() == 2


def test_acquire_blocking_gets_the_implicit_token_handed_over() -> None:
    """A token released inside this process (the implicit one) wakes a
    thread blocked in the kernel wait."""
    with fastjob.Server(2) as server:
        c = server.client
        implicit, pool_tok = c.try_acquire(), c.try_acquire()
        assert implicit is not None and pool_tok is not None and implicit._byte == -1
        timer = threading.Timer(0.2, implicit.release)
        timer.start()
        try:
            tok = c.acquire_blocking(timeout=TIMEOUT)
        finally:
            timer.join()
        assert tok._byte == -1  # the implicit token, not a pool one
        tok.release()
        pool_tok.release()


def test_acquire_blocking_from_a_child_of_the_pool() -> None:
    """A child joined by name waits until the parent gives a token back."""
    with fastjob.Server(2) as server:
        held = server.client.try_acquire(), server.client.try_acquire()
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent("""
                import fastjob, sys
                c = fastjob.from_env(strict=True)
                first = c.try_acquire()          # the child's implicit token
                print("waiting", flush=True)
                tok = c.acquire_blocking(timeout=60)
                print("got", tok._byte, flush=True)
                tok.release(); first.release(); c.close()
            """)],
            env=server.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "waiting"
        held[1].release()  # type: ignore[union-attr]
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        assert out.split() == ["got", str(ord("+"))]
        held[0].release()  # type: ignore[union-attr]
        assert server.available() == 1


def test_wait_token_times_out_and_is_cancelled() -> None:
    with fastjob.Server(2) as server:
        c = server.client
        t = sem_of(c)
        tok = c.try_acquire(), c.try_acquire()
        assert t.wait_token(0.1) is False
        canceller = threading.Timer(0.2, t.cancel_waits)
        canceller.start()
        try:
            assert t.wait_token(TIMEOUT) is False  # cancelled, not timed out
        finally:
            canceller.join()
        for x in tok:
            x.release()  # type: ignore[union-attr]
        assert t.wait_token(0) is True  # a free token is taken at once
        t.write(ord("+"))


def test_ctrl_c_interrupts_acquire_blocking() -> None:
    """SIGINT during acquire_blocking raises KeyboardInterrupt (the wait is
    sliced), long before the watchdog would end the wait."""
    with fastjob.Server(2) as server:
        c = server.client
        held = c.try_acquire(), c.try_acquire()
        watchdog_fired = threading.Event()

        def watchdog() -> None:
            watchdog_fired.set()
            for x in held:
                x.release()  # type: ignore[union-attr]

        ctrl_c = threading.Timer(0.3, signal.raise_signal, (signal.SIGINT,))
        dog = threading.Timer(30, watchdog)
        ctrl_c.start()
        dog.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                tok = c.acquire_blocking(timeout=TIMEOUT)
                tok.release()
        finally:
            ctrl_c.join()
            dog.cancel()
        assert not watchdog_fired.is_set()
        assert c.statistics().tasks_waiting == 0
        for x in held:
            x.release()  # type: ignore[union-attr]
        assert server.available() == 1


# -- item 5: available() and leaked tokens --------------------------------------------
def test_available_counts_the_semaphore() -> None:
    with fastjob.Server(4) as server:
        assert server.available() == 3
        c = server.client
        toks = [c.try_acquire() for _ in range(3)]  # implicit + 2 from the pool
        assert server.available() == 1 and c.available() == 1
        child = run_py("import fastjob; c = fastjob.from_env(strict=True); print(c.available())",
                       server.env())
        assert child.returncode == 0, child.stderr
        assert child.stdout.strip() == "1"
        for t in toks:
            t.release()  # type: ignore[union-attr]
        assert server.available() == 3


def test_close_notices_a_token_a_dead_child_kept() -> None:
    server = fastjob.Server(3)
    done = run_py("""
        import fastjob, os
        c = fastjob.from_env(strict=True)
        a, b = c.try_acquire(), c.try_acquire()   # implicit + one pool token
        assert b._byte >= 0
        os._exit(0)                               # dies holding it
    """, server.env())
    assert done.returncode == 0, done.stderr
    assert server.available() == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        server.close()
    msgs = [str(w.message) for w in caught if issubclass(w.category, fastjob.TokenLeakWarning)]
    assert len(msgs) == 1 and "1 jobserver token(s) were not returned" in msgs[0]


# -- item 6: POSIX pools on Windows --------------------------------------------------
def test_posix_pools_are_unsupported_with_a_windows_message() -> None:
    with pytest.raises(fastjob.UnsupportedPlatformError, match="style='sem'"):
        fastjob.Server(3, style="pipe")
    with pytest.raises(fastjob.UnsupportedPlatformError):
        fastjob.Server(3, style="fifo")
    for auth in ("3,4", "fifo:C:/tmp/f"):
        with pytest.raises(fastjob.UnsupportedPlatformError) as info:
            fastjob.from_env({"MAKEFLAGS": f"-j3 --jobserver-auth={auth}"}, strict=True)
        msg = str(info.value)
        assert "gmake_semaphore_" in msg and "Windows" in msg and "'+'" not in msg


# -- item 7: no free token missed while the waiter thread has it ---------------------
def test_try_acquire_never_misses_a_token_in_transit() -> None:
    """The waiter thread waits in the kernel; each released token is taken
    by it or by try_acquire, and try_acquire must get it either way."""
    with fastjob.Server(2) as server:
        c = server.client
        t = sem_of(c)
        implicit = c.try_acquire()
        tok = c.try_acquire()
        assert implicit is not None and tok is not None
        misses = 0
        for _ in range(400):
            assert t.try_read() == _io.AGAIN  # empty: the waiter thread waits
            time.sleep(0)
            tok.release()
            got = c.try_acquire()
            if got is None:
                misses += 1
                got = c.acquire_blocking(timeout=TIMEOUT)
            tok = got
        tok.release()
        implicit.release()
        assert misses == 0
        assert server.available() == 1


# -- the async paths on the Windows event loops ---------------------------------------
@pytest.mark.anyio
async def test_async_acquire_and_cancel_hand_back() -> None:
    with fastjob.Server(2) as server:
        c = server.client
        a, b = c.try_acquire(), c.try_acquire()
        assert a is not None and b is not None
        with anyio.move_on_after(0.1):
            await c.acquire()
        assert c.statistics().tasks_waiting == 0
        got: list[fastjob.Token] = []

        async def waiter() -> None:
            got.append(await c.acquire())

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                b.release()
        assert len(got) == 1
        got[0].release()
        a.release()
        with anyio.fail_after(TIMEOUT):
            while server.available() != 1:
                await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_job_group_runs_at_most_jobs_at_once(tmp_path: Path, anyio_backend: object) -> None:
    from .conftest import JOB_PY, JOB_SECONDS, max_overlap, read_stamps

    if isinstance(anyio_backend, tuple) and anyio_backend[1].get("loop_factory"):
        pytest.skip("asyncio's SelectorEventLoop cannot run subprocesses on Windows")

    job = tmp_path / "job.py"
    job.write_text(JOB_PY)
    with fastjob.Server(3) as server:
        with anyio.fail_after(TIMEOUT):
            async with fastjob.JobGroup(server) as group:
                for i in range(6):
                    group.start_soon(fastjob.run_process,
                                     [sys.executable, str(job), str(tmp_path / f"{i}.stamp"), JOB_SECONDS])
        assert server.available() == 2
    spans = read_stamps(tmp_path)
    assert len(spans) == 6 and max_overlap(spans) == 3
