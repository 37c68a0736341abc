"""Sync Client and Server: tokens across real processes and threads."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

import fastjob
from fastjob import _io


def test_server_pool_and_implicit_token() -> None:
    with fastjob.Server(4) as s:
        assert s.available() == 3
        c = s.client
        toks = [c.try_acquire() for _ in range(4)]
        assert all(t is not None for t in toks)
        assert toks[0] is not None and toks[0].implicit and toks[0].byte is None
        assert all(t is not None and t.byte == b"+" for t in toks[1:])
        assert c.try_acquire() is None
        assert s.available() == 0
        assert c.statistics().tokens_held == 4
        for t in toks:
            assert t is not None
            t.release()
            t.release()  # idempotent
        assert s.available() == 3 and c.statistics().tokens_held == 0


def test_jobs_one_and_invalid_jobs() -> None:
    with fastjob.Server(1) as s:
        assert s.available() == 0
        t = s.client.try_acquire()
        assert t is not None and t.implicit
        assert s.client.try_acquire() is None
        with pytest.raises(TimeoutError):
            s.client.acquire_blocking(timeout=0.05)
        t.release()
    for bad in (0, -3):
        with pytest.raises(ValueError):
            fastjob.Server(bad)
    with pytest.raises(TypeError):
        fastjob.Server("4")  # type: ignore[arg-type]


def test_release_echoes_the_byte_read() -> None:
    with fastjob.Server(2) as s:
        r, w = s.pass_fds
        # replace the '+' with a '|' as the Rust crate would write
        hold = s.client.try_acquire()
        tok = s.client.try_acquire()
        assert tok is not None
        tok.release()
        os.set_blocking(s.client._t.read_fd, False)
        assert _io.try_read(s.client._t.read_fd) == ord("+")
        os.write(w, b"|")
        tok = s.client.try_acquire()
        assert tok is not None and tok.byte == b"|"
        tok.release()
        assert os.read(s.client._t.read_fd, 1) == b"|"
        os.write(w, b"+")
        assert hold is not None
        hold.release()


def test_acquire_blocking_timeout_and_wakeup() -> None:
    with fastjob.Server(2) as s:
        c = s.client
        a, b = c.acquire_blocking(), c.acquire_blocking()
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            c.acquire_blocking(timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 2
        threading.Timer(0.1, b.release).start()
        got = c.acquire_blocking(timeout=5)
        assert not got.implicit
        # the implicit token released by another thread wakes a blocked waiter
        threading.Timer(0.1, a.release).start()
        got2 = c.acquire_blocking(timeout=5)
        assert got2.implicit
        got.release()
        got2.release()
        assert s.available() == 1


def test_threads_never_lose_or_duplicate() -> None:
    with fastjob.Server(3) as s:
        c = s.client
        active = 0
        peak = 0
        lock = threading.Lock()

        def worker() -> None:
            nonlocal active, peak
            for _ in range(300):
                with c.acquire_blocking(timeout=30):
                    with lock:
                        active += 1
                        peak = max(peak, active)
                    with lock:
                        active -= 1

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert peak <= 3
        assert s.available() == 2
        assert c.statistics().tokens_held == 0


WORKER = textwrap.dedent(
    """
    import sys, fastjob
    c = fastjob.from_env(strict=True)
    n = int(sys.argv[1])
    for i in range(n):
        t = c.acquire_blocking(timeout=30)
        t2 = c.try_acquire()
        if t2 is not None:
            t2.release()
        t.release()
    print(c.statistics().tokens_acquired)
    """
)


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_processes_cycle_thousands_of_times(style: str) -> None:
    with fastjob.Server(3, style=style) as s:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, "1500"],
                env=s.env(),
                pass_fds=s.pass_fds,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        total = 0
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0
            total += int(out)
        assert total >= 4 * 1500
        assert s.available() == 2


def test_token_garbage_collected_is_released_with_warning() -> None:
    with fastjob.Server(2) as s:
        hold = s.client.try_acquire()
        tok = s.client.try_acquire()
        assert tok is not None and s.available() == 0
        with pytest.warns(fastjob.TokenLeakWarning):
            del tok
            gc.collect()
        assert s.available() == 1
        assert hold is not None
        hold.release()


def test_server_close_warns_about_missing_tokens_and_reconcile() -> None:
    s = fastjob.Server(4)
    r, w = s.pass_fds
    os.set_blocking(s.client._t.read_fd, False)
    os.read(s.client._t.read_fd, 2)  # a "child" died holding two tokens
    assert s.reconcile() == 2 and s.available() == 3
    os.write(w, b"++")  # a child wrote two extra
    assert s.reconcile() == -2 and s.available() == 3
    os.read(s.client._t.read_fd, 1)
    with pytest.warns(fastjob.TokenLeakWarning, match="1 jobserver token"):
        s.close()


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_server_close_warns_about_surplus_tokens(style: str) -> None:
    """A process that gave back more than it took leaves the pool larger
    than -jN (more jobs than slots could run): close() says so, as make does
    ("Exiting with N jobserver tokens available; should be M!")."""
    s = fastjob.Server(4, style=style)
    held = s.client.try_acquire()  # the implicit token: not in the pool
    s.client._t.write(ord("+"))  # type: ignore[attr-defined]  # two bytes nobody took
    s.client._t.write(ord("+"))  # type: ignore[attr-defined]
    assert s.available() == 5
    with pytest.warns(fastjob.TokenLeakWarning, match=r"2 jobserver token\(s\) more .*pool 5, expected 3"):
        s.close()
    assert held is not None
    held.release()


def test_server_close_is_quiet_when_the_pool_is_exact() -> None:
    s = fastjob.Server(4)
    toks = [s.client.try_acquire() for _ in range(4)]
    for t in toks:
        assert t is not None
        t.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.close()


def test_fifo_server_files_are_private_and_removed() -> None:
    with fastjob.Server(2, style="fifo") as s:
        assert s.path is not None
        path = Path(s.path)
        assert path.is_fifo()
        assert (path.stat().st_mode & 0o777) == 0o600
        assert (path.parent.stat().st_mode & 0o777) == 0o700
        assert s.pass_fds == ()
        assert "fifo:" in s.env()["MAKEFLAGS"]
    assert not path.exists() and not path.parent.exists()


def test_tokens_held_at_exit_are_returned() -> None:
    with fastjob.Server(3) as s:
        code = "import fastjob; c = fastjob.from_env(strict=True); a = c.try_acquire(); b = c.try_acquire(); d = c.try_acquire(); globals()['keep'] = (a, b, d)"
        res = subprocess.run([sys.executable, "-c", code], env=s.env(), pass_fds=s.pass_fds, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert s.available() == 2


def test_unrelated_child_sees_no_fds_by_default() -> None:
    with fastjob.Server(3) as s:
        r, w = s.pass_fds
        code = f"import os\nfor fd in ({r},{w}):\n    try:\n        os.fstat(fd); print('open')\n    except OSError: print('closed')"
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, close_fds=False, timeout=60)
        assert res.stdout.split() == ["closed", "closed"]


def test_make43_server_with_client_in_recursive_recipe(tmp_path: Path) -> None:
    make = "/usr/bin/make"
    if not os.path.exists(make):
        pytest.skip("Debian make 4.3 is not installed (apt-get install make)")
    script = tmp_path / "client.py"
    script.write_text(
        "import fastjob, warnings, sys\n"
        "warnings.simplefilter('error')\n"
        "c = fastjob.from_env()\n"
        "print('client', c is not None and c.style)\n"
        "if c:\n"
        "    t = [c.acquire_blocking(timeout=60) for _ in range(3)]\n"
        "    print('got', len(t)); [x.release() for x in t]\n"
    )
    (tmp_path / "Makefile").write_text(
        f"all: a b\na:\n\t+@{sys.executable} {script}\nb:\n\t@{sys.executable} {script} 2>&1 | tail -1\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS")}
    res = subprocess.run([make, "-j3", "-C", str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "client pipe" in res.stdout and "got 3" in res.stdout
    assert "INTERNAL" not in res.stderr
    # without '+': the fds are closed, a JobserverWarning (made an error above) names the fix
    assert "failed to connect to jobserver" in res.stdout and "'+'" in res.stdout
