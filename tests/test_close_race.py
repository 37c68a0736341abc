"""close() racing a release() in another thread writes each byte back once.

close() gives back the tokens still held; a thread releasing one of them at
that moment must not write it too (two bytes for one slot: a pool that runs
one job more than it allows, for good).  Whoever takes the token's record
writes its byte; the other does nothing.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings

import pytest

import fastjob
from fastjob import _io

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pipe and FIFO pools")


def _tokens_in(server: fastjob.Server) -> int:
    """Every slot the Server's own client can take now (implicit included),
    given back afterwards."""
    got = []
    while (tok := server.client.try_acquire()) is not None:
        got.append(tok)
    for tok in got:
        tok.release()
    return len(got)


def test_a_release_waiting_for_the_fifo_writer_while_close_gives_it_back() -> None:
    """The release is blocked on the FIFO transport's lock (held here) when
    close() writes the token back under it; once let go it writes nothing."""
    with fastjob.Server(3, style="fifo") as s:
        c = fastjob.from_env(environ=s.env(), strict=True)
        assert c is not None
        tok = c.try_acquire()
        assert tok is not None and not tok.implicit
        errors: list[BaseException] = []

        def release() -> None:
            try:
                tok.release()
            except BaseException as exc:  # noqa: BLE001 - recorded for the assert
                errors.append(exc)

        lock = c._t._lock
        with lock:
            th = threading.Thread(target=release)
            th.start()
            time.sleep(0.3)  # (it waits for the lock; later, it finds close() done)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", fastjob.TokenLeakWarning)
                c.close()  # the lock is re-entrant: close() writes through it
        th.join(10)
        assert not th.is_alive()
        assert errors == []
        assert _tokens_in(s) == 3


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_releasing_threads_racing_close_lose_and_add_no_token(style: str) -> None:
    """Threads cycle tokens as fast as they can while the main thread closes
    their client; afterwards the pool holds exactly its slots.  (A race: the
    switch interval is made tiny so that the interpreter switches threads
    between the bytecodes of a release.)"""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with fastjob.Server(6, style=style) as s:
            for _round in range(20):
                c = fastjob.from_env(environ=s.env(), strict=True)
                assert c is not None
                stop = threading.Event()

                def cycle(c: fastjob.Client = c, stop: threading.Event = stop) -> None:
                    while not stop.is_set():
                        try:
                            tok = c.try_acquire()
                        except fastjob.JobserverError:
                            return  # closed
                        if tok is not None:
                            tok.release()

                threads = [threading.Thread(target=cycle) for _ in range(4)]
                for th in threads:
                    th.start()
                time.sleep(0.01)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", fastjob.TokenLeakWarning)
                    c.close()
                stop.set()
                for th in threads:
                    th.join(10)
                assert _tokens_in(s) == 6, (_round, _io.NATIVE)
    finally:
        sys.setswitchinterval(old)
