"""The "thread" strategy's reader thread (a blocking shared pipe: the macOS
path): one daemon thread per client reads the pool, GIL released, while
anyone waits, and hands each token to the oldest waiter."""

from __future__ import annotations

import os
import threading

from . import _io
from ._errors import JobserverError
from ._service_thread import start_service_thread
from ._waiting import ReentrantWait, poke, wake_up_pipe

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)

if TYPE_CHECKING:
    from ._core.token import Token
    from .client import Client

_signal_level = _io.signal_level
_block_signals = _io.block_signals
_restore_signals = _io.restore_signals


class Reader:
    """The "thread" strategy: one daemon thread per client does the reads
    (GIL released) while anyone waits and hands each token to the oldest
    waiter; it exits when nobody waits.  A token nobody waits for any more
    goes straight back."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._kick: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def _pipe(self) -> tuple[int, int]:
        if self._kick is None:
            self._kick = wake_up_pipe("the reader thread's wake-up pipe")
        return self._kick

    def kick(self) -> None:
        """There is demand (or a change): make the thread look again."""
        c = self._client
        with c._lock:
            if self._stopping:
                return
            kick = self._pipe()
            if self._thread is None:
                th = threading.Thread(target=self._run, name="fastjob-reader", daemon=True)
                level = _signal_level()  # a handler raising inside start() breaks threading
                try:
                    _block_signals()
                    # Recorded before it starts: a handler's raise at the end
                    # of the block once skipped this, and the next kick
                    # started a second reader (two blocking reads of the pool).
                    self._thread = th
                    # (block_signals masks the main thread only; a kick
                    # from another thread must block them for it too)
                    start_service_thread(th)
                except BaseException:
                    self._thread = None  # it did not start
                    raise
                finally:
                    _restore_signals(level)
        poke(kick, b"k")

    def try_get(self, timeout: float = 0.05) -> Token | None:
        """try_acquire on a blocking description: only when FIONREAD shows a
        token, let the thread read it, waiting at most ``timeout``."""
        if not (self._client.available() or 0):
            return None
        try:
            return self._client._blocking(1, timeout)[0]
        except (TimeoutError, ReentrantWait):
            return None  # (re-entered from inside this thread's own wait: it goes first)

    def _run(self) -> None:
        # Started with every signal blocked (kick): they go to the main
        # thread, never here, so a handler's exception cannot land between
        # our read and the hand-off.
        c = self._client
        t = c._t
        kick_r = self._pipe()[0]
        interval = t.liveness_interval
        try:
            while True:
                with c._lock:
                    if self._stopping or not c._queue.nwait or c._dead is not None:
                        self._thread = None
                        return
                r = _io.wait_readable(t.read_fd, kick_r, interval)
                if r == 2:
                    _io.drain(kick_r, 64)
                    continue
                if r == 0:
                    if interval is not None:
                        t.check_alive()
                    continue
                if not c._queue.nwait:
                    continue  # they gave up meanwhile: leave the token to others
                b = t.read_blocking() if not t.nonblocking_read else t.try_read()
                if b < 0:
                    continue
                # Adopted under the client's lock, so close() either counts it
                # (and writes it back) or finds it not adopted: then it goes
                # back from here.  (Adopted after close() counted, its release
                # would write nothing: the byte would be lost.)
                with c._lock:
                    tok = None if self._stopping or c._closed else c._core.adopt(b)
                if tok is None:
                    t.write(b)
                    continue
                c._place(tok)
        except JobserverError as exc:
            with c._lock:
                self._thread = None
            c._fail(exc)
        except OSError as exc:
            with c._lock:
                self._thread = None
            if not self._stopping:
                c._fail(JobserverError(f"jobserver read failed: {exc}"))

    def stop(self) -> None:
        self._stopping = True
        kick = self._kick
        if kick is not None:
            poke(kick, b"s")
        th = self._thread
        if th is not None and th is not threading.current_thread():
            th.join(timeout=1.0)
        if (th is None or not th.is_alive()) and kick is not None:
            os.close(kick[0])
            os.close(kick[1])
            self._kick = None
        # else: blocked in read() after a snipe; it returns the token it gets.
