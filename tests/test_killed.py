"""Killed children and killed servers.

* A child holding tokens is killed with SIGKILL (at a chosen and at random
  moments): ``Server.reconcile()`` and ``fastjob run`` restore the exact
  count and say how many were lost; a child that writes extra tokens
  (inflation) is detected and corrected too.
* The process owning a FIFO pool is killed with SIGTERM (FIFO removed) and
  SIGKILL (stale FIFO left): clients waiting on it get a JobserverClosedError
  within a bounded time, on every wait path (thread, asyncio, trio).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import fastjob
from fastjob._core.transport import FIFO_LIVENESS_INTERVAL

WORKER = str(Path(__file__).parent / "stress" / "worker.py")
STYLES = ["pipe", "fifo"]


def record(figures: dict[str, Any]) -> None:
    path = os.environ.get("FASTJOB_FIGURES_FILE")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(figures) + "\n")


def spawn(server: fastjob.Server, *args: str, **env: str) -> subprocess.Popen[str]:
    e = server.env()
    e.update(env)
    return subprocess.Popen(
        [sys.executable, WORKER, *args],
        env=e,
        pass_fds=server.pass_fds,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def reap(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.kill()
    p.communicate(timeout=30)


# -- killed children -------------------------------------------------------------------
@pytest.mark.parametrize("style", STYLES)
def test_sigkill_holder_exact_count(style: str) -> None:
    with fastjob.Server(5, style=style) as server:
        p = spawn(server, "--hold")
        try:
            assert p.stdout is not None
            line = p.stdout.readline().split()
            assert line[0] == "holding"
            held = int(line[1])
            assert held == 4  # everything in the pool
            assert server.available() == 0
            p.kill()
            p.wait(30)
        finally:
            reap(p)
        assert server.available() == 0  # nobody gave them back: lost
        assert server.reconcile() == held
        assert server.available() == 4
        assert server.reconcile() == 0  # idempotent once exact


@pytest.mark.parametrize("style", STYLES)
def test_sigkill_at_random_moments(style: str) -> None:
    """Busy workers are SIGKILLed at random moments; reconcile() puts back
    exactly what they held (never more: the count is exact afterwards)."""
    rng = random.Random(1234 + len(style))
    jobs = 4
    rounds = int(os.environ.get("FASTJOB_KILL_ROUNDS", "4"))
    lost_total = 0
    kills = 0
    with fastjob.Server(jobs, style=style) as server:
        for rnd in range(rounds):
            procs = [spawn(server, "30", str(rnd * 10 + i)) for i in range(3)]
            try:
                # Workers need ~0.3 s to import; kill between 0.2 and 1.2 s.
                for p in procs:
                    time.sleep(rng.uniform(0.05, 0.4))
                    p.send_signal(signal.SIGKILL)
                    kills += 1
                for p in procs:
                    p.wait(30)
                    assert p.returncode == -signal.SIGKILL
            finally:
                for p in procs:
                    reap(p)
            have = server.available()
            assert 0 <= have <= jobs - 1
            lost = server.reconcile()
            assert lost == jobs - 1 - have
            assert server.available() == jobs - 1
            lost_total += lost
    record({"test": f"killed-random-{style}", "kills": kills, "tokens_lost_by_kill": lost_total,
            "tokens_lost_after_reconcile": 0})


@pytest.mark.parametrize("style", STYLES)
def test_inflation_detected_and_corrected(style: str) -> None:
    with fastjob.Server(3, style=style) as server:
        code = textwrap.dedent(
            """
            import fastjob, os
            c = fastjob.from_env(strict=True)
            # A broken child writes bytes it never read.
            c._t.write(ord('+')); c._t.write(ord('+')); c._t.write(ord('!'))
            c.close()
            """
        )
        subprocess.run(
            [sys.executable, "-c", code], env=server.env(), pass_fds=server.pass_fds,
            check=True, timeout=60,
        )
        assert server.available() == 5
        assert server.reconcile() == -3
        assert server.available() == 2


def test_close_warns_when_short() -> None:
    """Without reconcile(), close() reports the loss (make's INTERNAL message)."""
    server = fastjob.Server(3)
    p = spawn(server, "--hold")
    try:
        assert p.stdout is not None and p.stdout.readline().startswith("holding 2")
        p.kill()
        p.wait(30)
    finally:
        reap(p)
    with pytest.warns(fastjob.TokenLeakWarning, match="2 jobserver token"):
        server.close()


def test_reconcile_refuses_while_tokens_held_here() -> None:
    with fastjob.Server(3) as server:
        other = fastjob.from_env(environ=server.env(), strict=True)
        assert other is not None
        tok = other.try_acquire()  # a pool token (the implicit one is the server's)
        assert tok is not None and not tok.implicit
        with pytest.raises(fastjob.JobserverError, match="still holds 1"):
            server.reconcile()
        tok.release()
        assert server.reconcile() == 0
        other.close()


GRANDCHILD_KILLER = textwrap.dedent(
    """
    import os, signal, subprocess, sys
    holder = subprocess.Popen([sys.executable, {worker!r}, "--hold"],
                              stdout=subprocess.PIPE, text=True, close_fds=False)
    line = holder.stdout.readline()
    assert line.startswith("holding"), line
    sys.stderr.write("child: grandchild " + line)
    holder.kill(); holder.wait(); holder.stdout.close()
    """
)


def cli_available() -> bool:
    try:
        import fastjob.cli  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not cli_available(), reason="fastjob.cli is not written yet")
@pytest.mark.parametrize("style", [None, "fifo"])
def test_fastjob_run_reports_lost_tokens(style: str | None) -> None:
    """`fastjob run -j4 -- cmd` where cmd's child dies holding tokens: the
    run says how many were lost and leaves nothing behind."""
    code = GRANDCHILD_KILLER.format(worker=WORKER)
    jobserver_vars = ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS")
    env = {k: v for k, v in os.environ.items() if k not in jobserver_vars}
    extra = ["--style", style] if style else []
    out = subprocess.run(
        [sys.executable, "-m", "fastjob", "run", "-j4", *extra, "--", sys.executable, "-c", code],
        env=env, capture_output=True, text=True, timeout=120,
    )
    if "unrecognized arguments: --style" in out.stderr:
        pytest.skip("fastjob run has no --style option")
    assert out.returncode == 0, out.stderr
    # The grandchild took the pool's 3 tokens (the command holds the implicit one).
    assert "grandchild holding 3" in out.stderr
    assert "3 jobserver tokens were not returned" in out.stderr, out.stderr


# -- killed servers ------------------------------------------------------------------------
SERVER = textwrap.dedent(
    """
    import sys, time, fastjob
    s = fastjob.Server(3, style="fifo")
    print(s.path, flush=True)
    time.sleep(120)
    """
)

# Detection takes one liveness interval; allow a generous margin for CI.
BOUND = FIFO_LIVENESS_INTERVAL * 3 + 2


class FifoOwner:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.path = self.proc.stdout.readline().strip()
        assert self.path

    def env(self) -> dict[str, str]:
        return {"MAKEFLAGS": f" -j3 --jobserver-auth=fifo:{self.path}"}

    def kill(self, sig: int) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def drain_pool(client: fastjob.Client) -> list[fastjob.Token]:
    held = []
    while True:
        t = client.try_acquire()
        if t is None:
            return held
        held.append(t)


def wait_until_waiting(client: fastjob.Client) -> None:
    for _ in range(2000):
        if client.statistics().tasks_waiting:
            return
        time.sleep(0.005)
    raise AssertionError("the waiter never started waiting")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("strategy", ["fifo-private", "thread"])
def test_killed_fifo_server_sync_waiter(
    sig: int, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTJOB_WAIT_STRATEGY", strategy)
    owner = FifoOwner()
    try:
        client = fastjob.from_env(environ=owner.env(), strict=True)
        assert client is not None
        held = drain_pool(client)
        assert len(held) == 3  # implicit + 2
        result: list[BaseException | fastjob.Token] = []

        def waiter() -> None:
            try:
                result.append(client.acquire_blocking(timeout=60))
            except BaseException as exc:  # noqa: BLE001 - checked below
                result.append(exc)

        th = threading.Thread(target=waiter, daemon=True)
        th.start()
        wait_until_waiting(client)
        t0 = time.monotonic()
        owner.kill(sig)
        assert os.path.exists(owner.path) == (sig == signal.SIGKILL)
        th.join(BOUND)
        elapsed = time.monotonic() - t0
        assert not th.is_alive(), "waiter hung on a dead FIFO pool"
        assert isinstance(result[0], fastjob.JobserverClosedError), result
        assert "exited" in str(result[0]) or "closed" in str(result[0])
        assert elapsed < BOUND
        for t in held:
            t.release()
        client.close()
    finally:
        owner.close()
        if os.path.exists(owner.path):
            os.unlink(owner.path)  # SIGKILL left it, as make's would be
            os.rmdir(os.path.dirname(owner.path))


@pytest.mark.anyio
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
async def test_killed_fifo_server_async_waiters(sig: int) -> None:
    owner = FifoOwner()
    try:
        client = fastjob.from_env(environ=owner.env(), strict=True)
        assert client is not None
        held = drain_pool(client)
        errors: list[BaseException] = []

        async def waiter() -> None:
            try:
                await client.acquire()
            except fastjob.JobserverError as exc:
                errors.append(exc)

        t0 = time.monotonic()
        with anyio.fail_after(BOUND + 5):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(waiter)
                while client.statistics().tasks_waiting < 3:
                    await anyio.sleep(0.005)
                t0 = time.monotonic()
                await anyio.to_thread.run_sync(owner.kill, sig)
        assert time.monotonic() - t0 < BOUND
        assert len(errors) == 3
        assert all(isinstance(e, fastjob.JobserverClosedError) for e in errors), errors
        for t in held:
            t.release()
        client.close()
    finally:
        owner.close()
        if os.path.exists(owner.path):
            os.unlink(owner.path)
            os.rmdir(os.path.dirname(owner.path))


def test_stale_fifo_at_open_is_closed_error() -> None:
    owner = FifoOwner()
    try:
        owner.kill(signal.SIGKILL)
        assert os.path.exists(owner.path)
        t0 = time.monotonic()
        with pytest.raises(fastjob.JobserverClosedError, match="stale"):
            fastjob.from_env(environ=owner.env(), strict=True)
        assert time.monotonic() - t0 < 1
        # Twice: a failed attempt must not leave an fd that makes it look alive.
        with pytest.raises(fastjob.JobserverClosedError):
            fastjob.from_env(environ=owner.env(), strict=True)
    finally:
        owner.close()
        if os.path.exists(owner.path):
            os.unlink(owner.path)
            os.rmdir(os.path.dirname(owner.path))
