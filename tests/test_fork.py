"""Fork safety: a process that forks while holding tokens (multiprocessing
with the fork start method, or os.fork) never releases them twice; the
child owns neither the parent's tokens nor its implicit token."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from typing import Any

import pytest

import fastjob
from fastjob import server as server_module

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork"),
    # Python >= 3.12 warns when forking with threads alive; that is the point here.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::fastjob.TokenLeakWarning"),
]

CTX = multiprocessing.get_context("fork")


def run_child(target: Any, *args: Any) -> int:
    p = CTX.Process(target=target, args=args)
    p.start()
    p.join(60)
    assert not p.is_alive(), "forked child hung"
    return int(p.exitcode or 0)


def _release_parents_tokens(toks: list[fastjob.Token], client: fastjob.Client) -> None:
    for t in toks:
        t.release()  # a no-op: the parent returns them
        t.release()
    stats = client.statistics()
    assert stats.tokens_held == 0 and not stats.implicit_held
    client.close()  # must not return the parent's tokens either
    sys.exit(0)


STYLES = [("pipe", "auto"), ("pipe", "thread"), ("fifo", "auto"), ("fifo", "thread")]


@pytest.fixture(params=STYLES, ids=[f"{a}-{b}" for a, b in STYLES])
def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    style, strategy = request.param
    monkeypatch.setenv("FASTJOB_WAIT_STRATEGY", strategy if strategy != "auto" else "")
    with fastjob.Server(5, style=style) as s:
        yield s


def test_child_releasing_parents_tokens_is_noop(server: fastjob.Server) -> None:
    c = server.client
    toks = [c.acquire_blocking(timeout=5) for _ in range(3)]  # implicit + 2
    assert toks[0].implicit
    assert server.available() == 2
    assert run_child(_release_parents_tokens, toks, c) == 0
    assert server.available() == 2  # nothing written twice
    for t in toks:
        t.release()
    assert server.available() == 4
    assert server.reconcile() == 0


def _child_uses_pool(client: fastjob.Client, n: int) -> None:
    toks = [client.acquire_blocking(timeout=10) for _ in range(n)]
    # No implicit token in the child: it is not a job of its own.
    assert not any(t.implicit for t in toks)
    for t in toks:
        t.release()
    os._exit(0)


def test_child_takes_its_own_tokens_from_the_pool(server: fastjob.Server) -> None:
    c = server.client
    held = [c.acquire_blocking(timeout=5) for _ in range(2)]  # implicit + 1
    assert run_child(_child_uses_pool, c, 3) == 0  # exactly the 3 left in the pool
    assert server.available() == 3
    for t in held:
        t.release()
    assert server.available() == 4


def _exit_holding(toks: list[fastjob.Token], how: str) -> None:
    del toks[:]  # garbage collect the parent's tokens in the child
    if how == "atexit":
        sys.exit(0)  # runs fastjob's atexit hook
    os._exit(0)


@pytest.mark.parametrize("how", ["atexit", "_exit"])
def test_child_exit_returns_nothing(server: fastjob.Server, how: str) -> None:
    c = server.client
    toks = [c.acquire_blocking(timeout=5) for _ in range(4)]
    assert server.available() == 1
    assert run_child(_exit_holding, toks, how) == 0
    assert server.available() == 1
    for t in toks:
        t.release()
    assert server.available() == 4


def _pool_worker(i: int) -> int:
    client = _POOL_CLIENT
    assert client is not None
    n = 0
    for _ in range(200):
        with client.acquire_blocking(timeout=30):
            n += 1
    return n


_POOL_CLIENT: fastjob.Client | None = None


def test_multiprocessing_pool_with_fork(server: fastjob.Server) -> None:
    """Fork-started pool workers share the pool; the parent holds tokens
    meanwhile; at the end every token is back exactly once."""
    global _POOL_CLIENT
    _POOL_CLIENT = server.client
    held = [server.client.acquire_blocking(timeout=5) for _ in range(2)]
    try:
        with CTX.Pool(3) as pool:
            counts = pool.map(_pool_worker, range(6), chunksize=1)
    finally:
        _POOL_CLIENT = None
    assert counts == [200] * 6
    assert server.available() == 3
    for t in held:
        t.release()
    assert server.available() == 4


def test_fork_during_async_wait_in_thread(server: fastjob.Server) -> None:
    """Fork while another thread is waiting for a token: the child inherits
    no waiter and no token; the parent's waiter still gets its token."""
    c = server.client
    toks = [c.acquire_blocking(timeout=5) for _ in range(5)]  # all of them
    got: list[fastjob.Token] = []
    th = threading.Thread(target=lambda: got.append(c.acquire_blocking(timeout=30)))
    th.start()
    for _ in range(2000):
        if c.statistics().tasks_waiting:
            break
        threading.Event().wait(0.005)

    def child() -> None:
        st = c.statistics()
        assert st.tasks_waiting == 0 and st.tokens_held == 0
        assert c.try_acquire() is None  # pool empty, no implicit
        os._exit(0)

    assert run_child(child) == 0
    toks.pop().release()
    th.join(30)
    assert not th.is_alive() and len(got) == 1
    got[0].release()
    for t in toks:
        t.release()
    assert server.available() == 4


def test_fifo_server_survives_forked_child_exit() -> None:
    with fastjob.Server(3, style="fifo") as server:
        path = str(server.path)

        def child() -> None:
            sys.exit(0)  # atexit in the child must not remove the parent's FIFO

        assert run_child(child) == 0
        assert os.path.exists(path)
        other = fastjob.from_env(environ=server.env(), strict=True)
        assert other is not None
        other.acquire_blocking(timeout=5).release()
        other.close()


def _sigterm_inside_c_call() -> None:
    # One C call that gets SIGTERM and then blocks: system() retries its
    # waitpid() on EINTR, so a Python-level handler cannot run until the
    # shell exits (the race a Pool worker loses when terminate() hits it
    # just as it enters sem_wait() for its next task).
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.system(b"kill -TERM $PPID; exec sleep 30")
    os._exit(3)


@pytest.mark.parametrize("style", ["fifo", "pipe"])
def test_forked_child_dies_of_sigterm_in_c_code(style: str) -> None:
    """A FIFO Server installs a SIGTERM handler (to remove its FIFO); a
    forked child must not inherit it: there SIGTERM kills at once, as it
    would without fastjob.  With the handler inherited, this child lives
    until its C call returns (30 s), and Pool.terminate() hangs in join()."""
    before = signal.getsignal(signal.SIGTERM)
    with fastjob.Server(2, style=style):
        p = CTX.Process(target=_sigterm_inside_c_call)
        p.start()
        p.join(10)
        alive = p.is_alive()
        if alive:
            p.kill()
            p.join(10)
        assert not alive, "the forked child survived SIGTERM (fastjob's handler inherited)"
        assert p.exitcode == -signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) in (before, server_module._on_signal)


def _report_handlers(conn: Any) -> None:
    conn.send([signal.getsignal(s) is server_module._on_signal for s in (signal.SIGTERM, signal.SIGHUP)])
    # A FIFO Server made in the child protects its own FIFO again.
    with fastjob.Server(2, style="fifo"):
        conn.send(signal.getsignal(signal.SIGTERM) is server_module._on_signal)
    os._exit(0)


def test_forked_child_gets_handlers_back_and_can_install_its_own() -> None:
    with fastjob.Server(2, style="fifo"):
        assert signal.getsignal(signal.SIGTERM) is server_module._on_signal
        parent, child = CTX.Pipe()
        p = CTX.Process(target=_report_handlers, args=(child,))
        p.start()
        assert parent.poll(30)
        assert parent.recv() == [False, False]
        assert parent.poll(30)
        assert parent.recv() is True
        p.join(30)
        assert p.exitcode == 0
