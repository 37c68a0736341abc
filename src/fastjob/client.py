"""Client: a thin facade over the token core and the wait glue.

The core (``_io.Core``: native ``_fastjob.Core`` or its pure twin) holds the
tokens, the implicit token and the fast path; ``WaiterQueue``
(``fastjob._core.queue``, native or pure twin as the core) holds the one
first-come-first-served queue of waiters (threads and tasks alike, weighted
or not).  This module reads for that queue, hands on and wakes, and decides
who waits on the pool's fd:

* on each event loop only the oldest waiter of that loop (its *leader*)
  waits on the fd, and every Client of that fd on that loop shares that one
  registration;
* among threads in ``acquire_blocking`` only the oldest (the thread leader)
  polls the fd, the others sleep on a lock of their own;
* under the "thread" strategy one reader thread per client does the reads
  (``fastjob._reader``).

Whoever reads a token hands it to the head of the queue: a weighted waiter at
the head gathers tokens until it has all it asked for, and those behind it
wait.  A waiter that gives up (cancelled, timed out, interrupted) hands what
it gathered to the next waiter or back to the pool.
"""

from __future__ import annotations

import _thread
import atexit
import errno
import math
import os
import threading
import time
import warnings
import weakref
from types import TracebackType
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)

from . import _backend, _io
from ._core.queue import WaiterQueue
from ._core.token import Token, TokenSet
from ._core.transport import FifoTransport, PipeTransport, Transport
from ._errors import JobserverClosedError, JobserverError, TokenLeakWarning
from ._makeflags import child_environment
from ._reader import Reader
from ._waiting import (
    AioFdWatch,
    ExclusiveWait,
    FdWatch,
    LoopState,
    ReentrantWait,
    Waiter,
    poke,
    wake_up_pipe,
)

if TYPE_CHECKING:
    from typing import Any, Callable, Generator

    import anyio

    from ._statistics import ClientStatistics

__all__ = ["Client", "ClientStatistics", "Token", "TokenSet"]


def __getattr__(name: str) -> object:
    # ClientStatistics lives in _statistics (dataclasses is imported only
    # when a snapshot is taken); this keeps fastjob.client.ClientStatistics.
    if name == "ClientStatistics":
        from ._statistics import ClientStatistics

        return ClientStatistics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_fork_generation = 0
_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()
# Which live client of this process owns the implicit token of a pool.
_implicit_claims: dict[object, weakref.ref[Client]] = {}
_claims_lock = threading.Lock()
_signal_level = _io.signal_level
_block_signals = _io.block_signals
_restore_signals = _io.restore_signals


def _check_timeout(timeout: object) -> float | None:
    """None, or the timeout as a float; ValueError for NaN and non-numbers."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ValueError(f"timeout must be a number of seconds or None, not {timeout!r}")
    t = float(timeout)
    if math.isnan(t):
        raise ValueError("timeout must be a number of seconds or None, not NaN")
    return None if t == math.inf else t


class Client:
    """A member of a jobserver pool.  Get one from :func:`fastjob.from_env`,
    :func:`fastjob.connect` or ``Server.client``.

    The first concurrent acquire in the process gets the implicit token
    (``implicit_token=True``, the default) without touching the pool.
    """

    _closed = True  # until __init__ has opened everything (for __del__)

    def __init__(
        self,
        transport: Transport,
        *,
        implicit_token: bool = True,
        jobs: int | None = None,
        source: str = "",
    ) -> None:
        self._t = transport
        self._lock = threading.RLock()
        self._jobs = jobs
        self._source = source
        self._waiting_threads: set[int] = set()  # threads in _blocking now
        self._loops: dict[object, LoopState] = {}
        self._dead: JobserverError | None = None
        self._tleader_ref: weakref.ref[Waiter] | None = None
        self._wake: tuple[int, int] | None = None
        self._excl: ExclusiveWait | None = None  # with _wake, on Linux
        self._gen = _fork_generation
        self._pool_key = transport.identity()
        self._owns_implicit = implicit_token and self._claim_implicit()
        rfd, wfd, read_mode, write_mode = self._io_modes(transport)
        self._read_mode = read_mode
        self._core = _io.Core(
            transport,
            rfd,
            wfd,
            read_mode,
            write_mode,
            self._owns_implicit,
            self._gen,
            self._slow_try,
            self._implicit_freed,
            self._on_write_error,
            self._full_error,
        )
        self._queue = WaiterQueue(self._core)
        # The whole fast path is one call into the core.
        self.try_acquire = self._core.try_acquire  # type: ignore[method-assign]
        self._try_loop: Callable[[], Token | None] = (
            self._try_now if read_mode == _io.READ_NONE else self._core.try_acquire
        )
        # ``client.token()`` is one C call (the context class lives in the core)
        self.token = _io.TokenContexts(self, self._try_loop)  # type: ignore[method-assign]
        self._reader = Reader(self) if transport.strategy == "thread" else None
        # On asyncio the fd's reader callback reads for the queue (see
        # AioFdWatch) unless a reader thread, a semaphore's waiter thread or
        # a FIFO's liveness check has to be driven by a waiting task.
        self._aio_direct = (
            self._reader is None
            and transport.liveness_interval is None
            and getattr(transport, "want", None) is None
        )
        # A thread that finds nobody queued waits alone, in one native call
        # that waits, reads and records (Core.solo_wait), outside the queue
        # until someone else needs the queue (_adopt_solo).
        self._solo_ok = (
            self._reader is None
            and getattr(transport, "wait_token", None) is None
            and read_mode in (_io.READ_FD, _io.READ_NOWAIT)
        )
        self._closed = False
        _live_clients.add(self)

    def _io_modes(self, t: Transport) -> tuple[int, int, int, int]:
        """(read fd, write fd, read mode, write mode) of the core for t."""
        if isinstance(t, PipeTransport):
            if t.strategy == "rwf-nowait":
                read_mode = _io.READ_NOWAIT
            elif t.nonblocking_read:
                read_mode = _io.READ_FD
            else:
                read_mode = _io.READ_NONE
            if t.private_write_fd >= 0:
                return t.read_fd, t.private_write_fd, read_mode, _io.WRITE_FD
            # The write end is shared (and usually blocking): write with
            # RWF_NOWAIT / after a poll; never touch its flags.
            return t.read_fd, t.shared_write_fd, read_mode, _io.WRITE_NOWAIT
        if isinstance(t, FifoTransport) and hasattr(t, "_lock") and hasattr(t, "_wfd"):
            # our own O_NONBLOCK descriptors; the writer is reopened by the
            # liveness check, so the core takes it under the transport's lock
            return t.read_fd, -1, _io.READ_FD, _io.WRITE_LOCKED
        return t.read_fd, -1, _io.READ_PY, _io.WRITE_PY

    # -- the implicit token ---------------------------------------------------
    def _claim_implicit(self) -> bool:
        with _claims_lock:
            ref = _implicit_claims.get(self._pool_key)
            owner = ref() if ref is not None else None
            if owner is not None and not owner._closed:
                return False  # another client of this process has it already
            _implicit_claims[self._pool_key] = weakref.ref(self)
            return True

    # -- errors ------------------------------------------------------------------
    def _on_write_error(self, exc: OSError) -> None:
        if exc.errno in (errno.EPIPE, errno.EBADF, errno.ENXIO):
            raise self._t.closed_error() from None

    def _full_error(self) -> JobserverError:
        return JobserverError(
            f"cannot give a token back: the jobserver pool ({self._t.describe()}) is full "
            "(another process wrote more tokens than it took). The token is still held; "
            "release() it again once the pool has room"
        )

    def _closed_error(self) -> JobserverError:
        return JobserverError("this fastjob Client is closed; create a new one")

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()
        if self._dead is not None:
            raise self._dead

    # -- non-blocking acquire ------------------------------------------------------
    def try_acquire(self) -> Token | None:
        """A token if one is free right now (implicit first), else None.
        Never waits for a token to be released.  Returns None while other
        tasks or threads of this process are queued: they are served first.
        (Under the "thread" strategy on a blocking shared pipe, the macOS
        case, it may wait up to 50 ms for the reader thread to fetch a token
        that FIONREAD shows is there; ``await acquire()`` never does.)"""
        # Replaced per instance by the core's try_acquire (see __init__),
        # which calls _slow_try when it cannot decide alone.
        return self._core.try_acquire()

    def _slow_try(self) -> Token | None:
        self._check_open()
        if self._queued():
            return None  # first come, first served: queued waiters go first
        tok = self._core.take_implicit()
        if tok is not None:
            return tok
        if self._read_mode == _io.READ_NONE:
            assert self._reader is not None
            return self._reader.try_get()
        return self._take()

    def _try_now(self) -> Token | None:
        """try_acquire that never waits, also under the "thread" strategy
        (for event loops)."""
        self._check_open()
        if self._queued():
            return None
        tok = self._core.take_implicit()
        if tok is None and self._read_mode != _io.READ_NONE:
            tok = self._take()
        return tok

    def _take(self) -> Token | None:
        """core.take(); a dead pool fails every waiter, present and future."""
        try:
            return self._core.take()
        except JobserverClosedError as exc:
            self._fail(exc)
            raise

    def try_acquire_up_to(self, n: int) -> TokenSet:
        """Up to ``n`` slots that are free right now (the implicit one counts
        as one), without waiting: possibly none (an empty TokenSet)."""
        n = self._check_weight(n, "n", limit=False)
        level = _signal_level()
        try:
            _block_signals()
            with self._lock:
                self._check_open()
                got: list[Token] = []
                if not self._queued():
                    self._top_up(got, n)
                ts = TokenSet(got)
        finally:
            _restore_signals(level)
        return ts

    def _top_up(self, got: list[Token], n: int) -> None:
        """Add what is free now to got, up to n (caller holds the lock)."""
        while len(got) < n:
            tok = self._core.take_implicit()
            if tok is None and self._read_mode != _io.READ_NONE:
                try:
                    tok = self._take()
                except BaseException:
                    for t in got:
                        t.release()
                    got.clear()
                    raise
            if tok is None:
                return
            got.append(tok)

    def _check_weight(self, n: object, name: str, *, limit: bool = True) -> int:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"{name} must be an int, not {type(n).__name__}")
        if n < 1:
            raise ValueError(f"{name} must be at least 1, not {n}")
        if limit and self._jobs is not None and n > self._jobs:
            raise ValueError(
                f"{name}={n} slots can never be free at once: the pool has only "
                f"{self._jobs} (-j{self._jobs}); ask for at most {self._jobs}"
            )
        return n

    # -- the queue (every change under self._lock, with signals blocked) ------------
    @property
    def _tleader(self) -> Waiter | None:
        ref = self._tleader_ref
        return None if ref is None else ref()

    def _queued(self) -> bool:
        """True when live waiters queue, a thread waits alone, or waiters
        were served and have not resumed yet (dropping dead ones)."""
        core = self._core
        if not core.nwait and core.solo is None:
            return False
        with self._lock:
            self._sweep()  # the queue's head and the few served ones
            return bool(core.nwait) or core.solo is not None

    def _queued_waiters(self) -> int:
        """Waiters queued now (not the served ones about to resume), the
        thread waiting alone included (JobGroup's first-come rule)."""
        return self._queue.nwait + (self._core.solo is not None)

    def _adopt_solo(self) -> None:
        """Put the thread that waits alone (if one does) at the head of the
        queue, as the thread leader, and wake it: someone queues behind it, a
        slot is handed to it, or the pool fails or closes (caller holds the
        lock).  It goes on in _wait_thread."""
        w = self._core.solo_claim()
        if w is None:
            return
        self._tleader_ref = self._queue.enqueue(w, front=True)
        self._kick_thread_leader()

    def _sweep(self, scan: bool = False) -> None:
        """Drop waiters whose owner vanished and place what they had
        gathered (caller holds the lock); see WaiterQueue.sweep."""
        for tok in self._queue.sweep(scan):
            self._place(tok)

    def _resumed(self, w: Waiter) -> None:
        """w runs again (served, or giving up)."""
        if w.ref is not None:
            with self._lock:
                self._queue.resumed(w)
            if self._queue.nwait and self._core.implicit_free:
                # freed while only served waiters were left: the queue's now
                self._implicit_freed()

    def _register(self, w: Waiter, tried: bool = False) -> bool:
        """Queue w; True when it got all it needs at once (it is then not
        queued).  Nobody queued before it: it takes what is free now (unless
        ``tried``: its caller found nothing free a moment ago, in this
        thread, so another read would only cost a syscall)."""
        with self._lock:
            self._check_open()
            if not (tried and w.need == 1) and not self._queued():
                self._top_up(w.got, w.need)
                if len(w.got) >= w.need:
                    w.done = True
                    return True
            if self._queue.died:
                self._sweep()
            self._adopt_solo()  # first come: it stays ahead of w
            ref = self._queue.enqueue(w)
            if w.state is not None:
                w.state.queue.append(ref)
        return False

    def _deliver(self, tok: Token) -> tuple[bool, Waiter | None]:
        """Give tok to the head of the queue (caller holds the lock):
        (False, None) when nobody waits; else (True, the waiter to wake when
        it now has all it needs)."""
        q = self._queue
        w: Waiter | None = q.head()
        if w is None and self._core.solo is not None:
            self._adopt_solo()
            w = q.head()
        if w is None or self._closed:
            return False, None
        return True, (w if q.serve(w, tok) else None)

    def _place(self, tok: Token) -> None:
        """A token nobody holds: to the oldest waiter, else back to the pool
        (then it only passed through: not counted as acquired)."""
        with self._lock:
            taken, w = self._deliver(tok)
            if not taken:
                self._core.acquired -= 1
        self._hand_over(tok, taken, w)

    def _hand_over(self, tok: Token, taken: bool, w: Waiter | None) -> None:
        """After _deliver, the lock released: wake the waiter that tok
        completed, or give tok back to the pool when nobody waited."""
        if not taken:
            tok.release()
        elif w is not None:
            self._wake_waiter(w)

    def _pump(self) -> bool:
        """Read one token for the queue; False when the pool had none."""
        level = _signal_level()
        try:
            _block_signals()
            with self._lock:
                if self._closed:
                    return False  # its fd is closed (its number maybe reused): never read it
                tok = self._core.take_implicit()  # free while nobody could take it
                if tok is None:
                    tok = self._take()
                if tok is None:
                    return False
                taken, w = self._deliver(tok)
                if not taken:
                    self._core.acquired -= 1  # only passed through
            self._hand_over(tok, taken, w)
            return True
        finally:
            _restore_signals(level)

    def _hand_on_wake(self) -> None:
        """Hand-on rule for a wait registration that goes (AioFdWatch): the
        kernel may have woken this process alone for a byte in the pool;
        read it and give it to the oldest waiter, else straight back (its
        write wakes the next waiting process).  A byte that only passes
        through is not counted as acquired."""
        level = _signal_level()
        try:
            _block_signals()
            with self._lock:
                if self._closed or self._dead is not None:
                    return  # closed: its fd number may be reused; dead: nothing to pass on
                tok = self._take()
                if tok is None:
                    return
                taken, w = self._deliver(tok)
                if not taken:
                    self._core.acquired -= 1
            self._hand_over(tok, taken, w)
        finally:
            _restore_signals(level)

    def _implicit_freed(self) -> None:
        """The core freed the implicit token while waiters queue: hand it on."""
        level = _signal_level()
        try:
            _block_signals()
            with self._lock:
                if not self._queue.nwait and self._core.solo is None:
                    return
                tok = self._core.take_implicit()
                if tok is None:
                    return
                taken, w = self._deliver(tok)
            self._hand_over(tok, taken, w)
        finally:
            _restore_signals(level)

    def _abandon(self, w: Waiter) -> None:
        """w gave up (cancelled, timed out, failed): its slots go on."""
        level = _signal_level()
        try:
            _block_signals()
            wake: list[Waiter] = []
            back: list[Token] = []
            with self._lock:
                for tok in self._queue.leave(w):
                    taken, x = self._deliver(tok)
                    if not taken:
                        back.append(tok)
                    elif x is not None:
                        wake.append(x)
                if self._tleader is w:
                    self._pass_thread_lead()
                    self._hand_on(back, wake)
            for tok in back:
                try:
                    tok.release()
                except JobserverError:
                    pass  # the pool is gone: nothing to give back to
            for x in wake:
                self._wake_waiter(x)
        finally:
            _restore_signals(level)

    def _hand_on(self, back: list[Token], wake: list[Waiter]) -> None:
        """Hand-on rule, for a thread that leaves its exclusive wait (caller
        holds the lock): the kernel may have woken it alone for a byte it did
        not read; read it for the queue, else it goes back into ``back`` (and
        that write wakes the next exclusive waiter)."""
        if self._excl is None or self._closed or self._dead is not None:
            return
        try:
            passed = self._take()
        except JobserverError:
            return  # the pool is dead: every waiter hears it
        if passed is not None:
            taken, x = self._deliver(passed)
            if not taken:
                back.append(passed)
                self._core.acquired -= 1  # only passed through
            elif x is not None:
                wake.append(x)

    def _leave_solo(self, w: Waiter) -> bool:
        """w, waiting alone, gives up: True if it still was alone (else it
        is in the queue, and _abandon is for it).  Hand-on rule as in
        _abandon (the pure twin runs Python code between the wake and the
        read, where a signal handler may raise)."""
        level = _signal_level()
        try:
            _block_signals()
            back: list[Token] = []
            wake: list[Waiter] = []
            with self._lock:
                if not self._core.solo_leave(w):
                    return False
                self._hand_on(back, wake)
            for tok in back:
                try:
                    tok.release()
                except JobserverError:
                    pass
            for x in wake:
                self._wake_waiter(x)
            return True
        finally:
            _restore_signals(level)

    def _fail(self, error: JobserverError) -> None:
        """The pool is dead: every waiter, present and future, gets error."""
        with self._lock:
            if self._dead is None:
                self._dead = error
            self._adopt_solo()
            waiters = self._queue.live()
            for w in waiters:
                w.error = error
                self._queue.unlink(w)
        for w in waiters:
            self._wake_waiter(w)

    def _wake_waiter(self, w: Waiter) -> None:
        w.wake()
        ref = self._tleader_ref
        if ref is not None and ref() is w and w.thread != _thread.get_ident():
            # (the leader serving itself is awake: no kick, no spurious wake)
            self._kick_thread_leader()

    # -- blocking acquire (threads) ---------------------------------------------------
    def acquire_blocking(self, timeout: float | None = None) -> Token:
        """Wait in this thread (GIL released) for a token; TimeoutError after
        ``timeout`` seconds.  Ctrl-C (any signal handler that raises)
        interrupts the wait."""
        t = _check_timeout(timeout)
        tok = self.try_acquire()
        if tok is not None:
            return tok
        if t is not None and t <= 0:
            raise TimeoutError("no jobserver token is free now (timeout=0)")
        return self._blocking(1, t, tried=True)[0]

    def acquire_many_blocking(self, n: int, timeout: float | None = None) -> TokenSet:
        """Wait in this thread for ``n`` slots at once (the implicit one counts
        as one); TimeoutError after ``timeout`` seconds, with every slot
        gathered meanwhile handed on."""
        n = self._check_weight(n, "n")
        t = _check_timeout(timeout)
        if n == 1:  # one slot: the plain acquire (it may wait alone, no queue)
            return TokenSet([self.acquire_blocking(t)])
        return TokenSet(self._blocking(n, t, fail_now=t is not None and t <= 0))

    def _blocking(
        self, need: int, timeout: float | None, fail_now: bool = False, tried: bool = False
    ) -> list[Token]:
        deadline = None if timeout is None else time.monotonic() + timeout
        w = Waiter(need)
        lock = _thread.allocate_lock()
        lock.acquire()
        w.lock = lock
        me = w.thread = _thread.get_ident()
        solo = False
        waiting = self._waiting_threads
        added = False
        try:
            level = _signal_level()
            try:
                _block_signals()
                if me in waiting:
                    # this thread waits already (this call comes from a signal
                    # handler, or a finalizer, inside that wait): it would wait
                    # for itself, first come first served, for good
                    raise ReentrantWait(
                        "acquire_blocking() on a thread that is waiting for this client "
                        "already (called from a signal handler inside that wait?): it "
                        "would wait for itself"
                    )
                # (flagged first: a handler can raise at add's return, see
                # docs/guarantees.md; discarding what was not added is harmless)
                added = True
                waiting.add(me)
                if self._reader is None:
                    self._wake_pipe()  # before queueing: a failure here is one clean error
                if tried and self._solo_ok:
                    solo = self._begin_solo(w)
                if w.done:
                    return w.got
                if not solo and self._register(w, tried):
                    return w.got
                if fail_now:
                    raise TimeoutError("the jobserver slots are not free now (timeout=0)")
            finally:
                _restore_signals(level)
            if solo:
                tok = self._wait_solo(w, deadline)
                if tok is not None:
                    return [tok]
            if self._reader is not None:
                self._reader.kick()
            self._wait_thread(w, deadline)
            self._resumed(w)
            return w.got
        except ReentrantWait:
            raise  # (it never queued)
        except BaseException:
            # (not judged by ``solo``: a handler can raise between
            # _begin_solo's making w the lone waiter and that assignment)
            if not self._leave_solo(w):
                self._abandon(w)
            raise
        finally:
            if added:
                waiting.discard(me)

    def _begin_solo(self, w: Waiter) -> bool:
        """w waits alone if nobody queues (caller blocked signals); it may
        get the implicit token at once (w.done)."""
        with self._lock:
            self._check_open()
            if self._queued():
                return False
            core = self._core
            core.solo = w
            # freed since the caller looked (no hand-off could see w then)
            tok = core.take_implicit()
            if tok is not None:
                core.solo = None
                w.got.append(tok)
                w.done = True
            return True

    def _wait_solo(self, w: Waiter, deadline: float | None) -> Token | None:
        """Wait alone for one token (Core.solo_wait); None once w was put in
        the queue (it goes on waiting there, as the thread leader)."""
        core = self._core
        t = self._t
        interval = t.liveness_interval
        assert self._wake is not None
        wake_r = self._wake[0]
        excl = self._excl
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no jobserver token became free in time")
            wait_for = remaining
            if interval is not None:
                wait_for = interval if wait_for is None else min(wait_for, interval)
            started = time.monotonic()
            try:
                r = core.solo_wait(w, excl, wake_r, wait_for)
                if type(r) is not int:
                    return r  # type: ignore[return-value]
                if r == 2:
                    _io.drain(wake_r, 64)
                if core.solo is not w:
                    return None
                if r == 0 and interval is not None and time.monotonic() - started >= interval:
                    t.check_alive()
            except JobserverError as exc:
                self._fail(exc)
                raise

    def _wake_pipe(self) -> tuple[int, int]:
        with self._lock:
            if self._wake is None:
                wake = wake_up_pipe("the wake-up pipe")
                t = self._t
                if ExclusiveWait.usable() and getattr(t, "wait_token", None) is None:
                    try:
                        self._excl = ExclusiveWait(t.read_fd, wake[0])
                    except OSError as exc:
                        if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                            # not a pipe or FIFO epoll takes (EPERM): the
                            # plain poll below works, waking every waiter
                            self._wake = wake
                            return wake
                        for fd in wake:
                            os.close(fd)
                        raise JobserverError(
                            "cannot wait for a jobserver token: no file descriptor is free "
                            f"for the wait's epoll set ({exc.strerror}); close some files or "
                            "raise the limit (ulimit -n)"
                        ) from None
                self._wake = wake
            return self._wake

    def _kick_thread_leader(self) -> None:
        wake = self._wake
        if wake is not None:
            poke(wake, b"w")
        cancel = getattr(self._t, "cancel_waits", None)
        if cancel is not None:
            cancel()

    def _pass_thread_lead(self) -> None:
        """The thread leader leaves: the next thread waiter leads (caller
        holds the lock)."""
        self._tleader_ref = None
        for x in self._queue.live():
            if x.lock is not None:
                x.wake()
                return

    def _wait_thread(self, w: Waiter, deadline: float | None) -> None:
        t = self._t
        interval = t.liveness_interval
        wait_token = getattr(t, "wait_token", None)
        while True:
            if w.done or w.error is not None:
                if self._tleader is w:  # adopted from waiting alone, then served
                    with self._lock:
                        if self._tleader is w:
                            self._pass_thread_lead()
                            self._close_wake_if_closed()
                if w.error is not None:
                    raise w.error
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no jobserver token became free in time")
            if self._reader is None:
                with self._lock:
                    if self._tleader is None and not w.gone:
                        self._tleader_ref = w.ref
            if self._tleader is not w:
                w.lock.acquire(True, -1 if remaining is None else remaining)
                continue
            try:
                self._lead_thread(w, remaining, interval, wait_token)
            except JobserverError as exc:
                self._fail(exc)
                raise
            finally:
                if w.done or w.error is not None:
                    with self._lock:
                        if self._tleader is w:
                            self._pass_thread_lead()
                            self._close_wake_if_closed()

    def _lead_thread(
        self, w: Waiter, remaining: float | None, interval: float | None, wait_token: Any
    ) -> None:
        """One round of the thread leader: wait for the pool and read."""
        t = self._t
        wait_for = remaining
        if interval is not None:
            wait_for = interval if wait_for is None else min(wait_for, interval)
        if wait_token is not None:
            # Windows semaphore: the transport's own interruptible wait
            if wait_token(wait_for):
                self._place(self._core.adopt(ord("+")))
            return
        assert self._wake is not None
        wake_r = self._wake[0]
        started = time.monotonic()
        excl = self._excl
        if excl is not None:
            r = excl.wait(wait_for)
        else:
            r = _io.wait_readable(t.read_fd, wake_r, wait_for)
        if r == 1:
            self._pump()
        elif r == 2:
            _io.drain(wake_r, 64)
        elif interval is not None and time.monotonic() - started >= interval and not w.done:
            t.check_alive()

    def _close_wake_if_closed(self) -> None:
        if self._closed and self._wake is not None and self._tleader is None:
            if self._excl is not None:
                self._excl.close()
                self._excl = None
            for fd in self._wake:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wake = None

    # -- async acquire --------------------------------------------------------
    async def acquire(self) -> Token:
        """Wait for a token without blocking the event loop.

        The implicit token or a pool byte that is there now returns without an
        event-loop round trip on asyncio; on trio this is a full checkpoint.
        Cancellation at any point leaves no token held.
        """
        if _backend.is_trio():
            import trio

            await trio.lowlevel.checkpoint_if_cancelled()
            tok = self._try_loop()
            if tok is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return tok
        else:
            tok = self._try_loop()
            if tok is not None:
                return tok
        return (await self._wait_async(1, True))[0]

    def acquire_many(self, n: int) -> _Acquiring:
        """``ts = await client.acquire_many(n)``: a TokenSet of ``n`` slots
        (the implicit one counts as one), first come first served with the
        other waiters: at the head of the queue it gathers tokens as they come
        while those behind it wait.  Cancellation hands every gathered slot
        on.  ValueError when ``n`` exceeds the pool's known size.  Also
        ``async with client.acquire_many(n) as ts:``."""
        n = self._check_weight(n, "n")
        return _Acquiring(self, n, n)

    def acquire_up_to(self, n: int, min: int = 1) -> _Acquiring:  # noqa: A002 - the API name
        """``ts = await client.acquire_up_to(n, min=1)``: wait for ``min``
        slots, then take whatever else is free right now, up to ``n`` in all,
        without waiting further (elastic jobs: threads where the build has
        room).  Also ``async with client.acquire_up_to(n) as ts:``."""
        n = self._check_weight(n, "n", limit=False)
        if isinstance(min, bool) or not isinstance(min, int):
            raise TypeError(f"min must be an int, not {type(min).__name__}")
        if not 0 <= min <= n:
            raise ValueError(f"min must be between 0 and n={n}, not {min}")
        if min:
            self._check_weight(min, "min")
        return _Acquiring(self, min, n)

    async def _gather(self, need: int, up_to: int) -> TokenSet:
        got: list[Token] = []
        if need:
            if _backend.is_trio():
                import trio

                await trio.lowlevel.checkpoint_if_cancelled()
            got = await self._wait_async(need)
        if len(got) < up_to:
            level = _signal_level()
            try:
                _block_signals()
                with self._lock:
                    if not self._queued() and not self._closed:
                        self._top_up(got, up_to)
            finally:
                _restore_signals(level)
        return TokenSet(got)

    def token(self) -> _io.TokenContext:
        """``async with client.token() as tok:`` acquire, run, release
        (also on error and cancellation)."""
        # Replaced per instance by a TokenContexts of the core (see __init__).
        return _io.TokenContexts(self, self._try_loop)()

    async def _ctx_wait(self, ctx: _io.TokenContext) -> Token:
        """TokenContext.__aenter__ on asyncio when no token is free now."""
        tok = (await self._wait_async(1, True))[0]
        ctx.token = tok
        return tok

    async def _ctx_acquire(self, ctx: _io.TokenContext) -> Token:
        """TokenContext.__aenter__ on trio: acquire() (a full checkpoint)."""
        tok = await self.acquire()
        ctx.token = tok
        return tok

    async def _wait_async(self, need: int, tried: bool = False) -> list[Token]:
        key, call, thread = _backend.loop_handle()
        w = Waiter(need)
        w.thread = thread
        if _backend.is_trio():
            w.call = call
            return await self._wait_led(w, key)
        # a bare future, not an anyio.Event (an asyncio.Event, its deque and
        # a future): about 0.7 KB less per waiting task
        loop: Any = key
        w.loop = loop
        w.event = loop.create_future()
        if not self._aio_direct:
            return await self._wait_led(w, key)
        # asyncio: queue, and sleep on the future; the fd's reader callback
        # (or whoever frees a slot in this process) serves the queue.  (Inline,
        # not a coroutine of its own: one frame less per waiting task.)
        try:
            level = _signal_level()
            try:
                _block_signals()
                done = self._register(w, tried)
            finally:
                _restore_signals(level)
            if done:
                return w.got
            fd = self._t.read_fd
            while True:
                if w.error is not None:
                    raise w.error
                AioFdWatch.join(loop, fd, self)
                await w.event
                if w.done:
                    break
                w.event = loop.create_future()  # woken, not served: wait again
            self._resumed(w)
            return w.got
        except BaseException:
            self._abandon(w)
            raise
        finally:
            if not self._queue.nwait:
                # Nobody queues any more: no registration may outlive that
                # (a closed client's fd must not stay in the loop's
                # selector).  Left unserved, or closed: drop it now; served:
                # on the next iteration, unless this task queues again.
                if self._closed or not w.done:
                    AioFdWatch.leave(loop, self._t.read_fd, self)
                else:
                    AioFdWatch.idle_soon(loop, self._t.read_fd)

    async def _wait_led(self, w: Waiter, key: object) -> list[Token]:
        """trio, and the strategies a waiting task drives: the oldest waiter
        of each loop waits on the fd (or kicks the reader) for all of them."""
        import anyio

        st = self._loops.get(key)
        if st is None:
            st = self._loops.setdefault(key, LoopState())
        aio = w.loop is not None
        if not aio:
            w.event = anyio.Event()
        w.state = st
        try:
            level = _signal_level()
            try:
                _block_signals()
                done = self._register(w)
            finally:
                _restore_signals(level)
            if done:
                if not aio:
                    import trio

                    await trio.lowlevel.cancel_shielded_checkpoint()
                return w.got
            if self._reader is not None:
                self._reader.kick()
            while not w.done:
                if w.error is not None:
                    raise w.error
                if self._reader is None and st.leader is None and st.first() is w:
                    await self._lead(w, st, key)
                elif aio:
                    await w.event
                    w.event = w.loop.create_future()
                else:
                    await w.event.wait()
                    w.event = anyio.Event()
            self._resumed(w)
            return w.got
        except BaseException:
            self._abandon(w)
            raise
        finally:
            if st.leader is None:
                # This waiter may have been woken to lead and left instead
                # (cancelled, or served by a hand-off first): without this,
                # the wake is lost and the loop's waiters sleep with nobody
                # on the fd.
                nxt = st.first()
                if nxt is not None:
                    nxt.wake_in_loop()
            if not st.queue and st.leader is None and self._loops.get(key) is st:
                del self._loops[key]  # no waiter of this loop left: forget it

    async def _lead(self, w: Waiter, st: LoopState, key: object) -> None:
        """The oldest waiter of a loop waits on the fd for all of them."""
        import anyio

        t = self._t
        interval = t.liveness_interval
        want = getattr(t, "want", None)
        st.leader = w
        try:
            while not w.done and w.error is None:
                if self._pump():
                    continue
                if want is not None:
                    want()  # a semaphore: its waiter thread announces a token on read_fd
                with anyio.CancelScope() as scope:
                    st.scope = scope
                    if w.done:
                        return
                    if interval is None:
                        await FdWatch.wait_readable(key, t.read_fd)
                    else:
                        with anyio.move_on_after(interval) as timer:
                            await FdWatch.wait_readable(key, t.read_fd)
                        if timer.cancelled_caught:
                            t.check_alive()
                st.scope = None
        except JobserverError as exc:
            # The pool is dead (EOF, owner gone) for every waiter, not just us.
            st.scope = None
            self._fail(exc)
            raise
        finally:
            st.leader = None
            st.scope = None
            # Hand the lead on, also when we leave by cancellation or error.
            nxt = st.first(skip=w)
            if nxt is not None:
                nxt.wake_in_loop()

    # -- information ---------------------------------------------------------
    def available(self) -> int | None:
        """Free tokens in the pool right now (not counting the implicit one),
        or None when that cannot be known."""
        self._core.flush()
        return self._t.available()

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment (``base`` or os.environ, copied) that lets a child
        join this pool: MAKEFLAGS and MFLAGS name it; CARGO_MAKEFLAGS is
        dropped (make never rewrites it, so it would go stale below a child
        ``make -jN``)."""
        return child_environment(base, self._t.auth(), self._jobs)

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """The fds a child must inherit to join (pipe style); () for fifo."""
        return self._t.pass_fds

    @property
    def style(self) -> str:
        """"pipe", "fifo" or "sem"."""
        return self._t.style

    @property
    def jobs(self) -> int | None:
        """The pool's -j number when known."""
        return self._jobs

    def _settle(self) -> None:
        """Record a byte a signal left unrecorded and drop vanished waiters,
        so that the core's counts are exact."""
        self._core.flush()
        level = _signal_level()
        try:
            _block_signals()
            with self._lock:
                self._sweep(scan=True)
        finally:
            _restore_signals(level)

    def _pool_tokens_held(self) -> int:
        """Pool tokens (not the implicit one) this client holds now."""
        self._settle()
        return int(self._core.held)

    def statistics(self) -> ClientStatistics:
        """Tokens held, implicit held, tasks waiting, total acquired, strategy."""
        from ._statistics import ClientStatistics

        self._settle()
        with self._lock:
            core = self._core
            implicit_held = self._owns_implicit and not core.implicit_free and not self._closed
            return ClientStatistics(
                tokens_held=core.held + int(implicit_held),
                implicit_held=implicit_held,
                tasks_waiting=self._queued_waiters(),
                tokens_acquired=core.acquired,
                wait_strategy=self._t.strategy,
            )

    @property
    def closed(self) -> bool:
        """True once close() ran."""
        return self._closed

    # -- lifetime --------------------------------------------------------------
    def close(self) -> None:
        """Stop waiters (JobserverError), return tokens still held (with a
        TokenLeakWarning) and close the fds this client opened."""
        leaked = self._shutdown()
        if leaked:
            warnings.warn(
                f"fastjob: {leaked} token(s) still held when the client was closed; "
                "they were returned to the pool",
                TokenLeakWarning,
                stacklevel=2,
            )

    def _shutdown(self) -> int:
        if self._reader is not None and not self._closed:
            # First: a token the reader thread has read but not yet handed
            # on is placed (or written back) by it, not counted as leaked.
            self._reader.stop()
        level = _signal_level()
        try:
            _block_signals()
            with self._lock:
                if self._closed:
                    return 0
                self._closed = True
                core = self._core
                core.closed = True
                held = core.held_bytes()
                core.implicit_free = False
                self._adopt_solo()
                waiters = self._queue.live()
                for w in waiters:
                    self._queue.unlink(w)
                    w.error = self._closed_error()
            for w in waiters:
                self._wake_waiter(w)
            for b in held:
                try:
                    self._t.write(b)
                except (OSError, JobserverError):
                    pass
            with self._lock:
                self._close_wake_if_closed()
            if AioFdWatch.waiting:
                AioFdWatch.forget_client(self)
            self._t.close()
            _live_clients.discard(self)
            return len(held)
        finally:
            _restore_signals(level)

    def __del__(self) -> None:
        if self._closed:
            return
        what = repr(self)
        leaked = self._shutdown()  # first: a warning turned into an error must not skip it
        if getattr(self, "_server", None) is None:
            # A Server's own client dies only with its Server (each keeps the
            # other alive), in the same garbage cycle, finalized in either
            # order: the Server's ResourceWarning speaks for both.
            warnings.warn(f"fastjob: unclosed {what}; close() it", ResourceWarning, stacklevel=2)
        if leaked:
            warnings.warn(
                f"fastjob: {leaked} token(s) still held when {what} was garbage collected; "
                "they were returned to the pool",
                TokenLeakWarning,
                stacklevel=2,
            )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<fastjob.Client {self._t.describe()} strategy={self._t.strategy}"
            f"{' closed' if self._closed else ''}>"
        )

    def _after_fork(self) -> None:
        # The child is not a job of its own: it owns neither the parent's
        # tokens nor the parent's implicit token.
        self._lock = threading.RLock()
        self._gen = _fork_generation
        self._owns_implicit = False
        self._waiting_threads.clear()  # (the parent's threads: their idents may come again here)
        self._loops.clear()
        self._tleader_ref = None
        if self._excl is not None:
            self._excl.close()  # its registrations are shared with the parent's
            self._excl = None
        if self._wake is not None:
            for fd in self._wake:  # the parent's threads use them: never share
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wake = None
        self._core.after_fork(self._gen)
        self._queue.clear()
        if self._reader is not None:
            self._reader = Reader(self)


class _Acquiring:
    """What acquire_many / acquire_up_to return: awaitable (a TokenSet) and
    an async context manager (released at exit)."""

    __slots__ = ("_client", "_need", "_up_to", "_set")

    def __init__(self, client: Client, need: int, up_to: int) -> None:
        self._client = client
        self._need = need
        self._up_to = up_to
        self._set: TokenSet | None = None

    def __await__(self) -> Generator[Any, None, TokenSet]:
        return self._client._gather(self._need, self._up_to).__await__()

    async def __aenter__(self) -> TokenSet:
        self._set = await self._client._gather(self._need, self._up_to)
        return self._set

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ts, self._set = self._set, None
        if ts is not None:
            ts.release()


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1
    AioFdWatch.after_fork()
    for c in list(_live_clients):
        c._after_fork()


def _release_all_at_exit() -> None:
    for c in list(_live_clients):
        try:
            c._shutdown()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_release_all_at_exit)
