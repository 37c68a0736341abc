"""Client: join a pool; the implicit token, async waiters, sync acquire.

Waiters of one process are served first-come first-served.  On each event
loop only the oldest waiter (the *leader*) registers a wait on the pool's fd;
the others sleep on an Event, so many tasks cost one registration.  Under the
"thread" strategy one reader thread per client does the (blocking) reads and
hands each token to the oldest waiter, or straight back to the pool.
"""

from __future__ import annotations

import atexit
import errno
import os
import threading
import time
import warnings
import weakref
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable

import anyio

from . import _backend, _io
from ._errors import JobserverError, TokenLeakWarning
from ._makeflags import child_environment
from ._io import Token
from ._core.sem import SemaphoreTransport
from ._core.transport import PipeTransport, Transport

__all__ = ["Client", "ClientStatistics", "Token"]

_fork_generation = 0
_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()
# Which live client of this process owns the implicit token of a pool.
_implicit_claims: dict[object, weakref.ref[Client]] = {}
_claims_lock = threading.Lock()


@dataclass(frozen=True)
class ClientStatistics:
    """A snapshot of one client's state (see :meth:`Client.statistics`)."""

    tokens_held: int
    implicit_held: bool
    tasks_waiting: int
    tokens_acquired: int
    wait_strategy: str


class _LoopState:
    """Per event loop: its waiters in order, and the leader's wait scope."""

    __slots__ = ("queue", "leader", "scope")

    def __init__(self) -> None:
        self.queue: deque[_Waiter] = deque()
        self.leader: _Waiter | None = None
        self.scope: anyio.CancelScope | None = None


class _Waiter:
    __slots__ = ("token", "error", "event", "state", "thread", "call", "wake_fd", "tevent", "gone")

    def __init__(self) -> None:
        self.gone = False  # unlinked from the queues (lazily dropped)
        self.token: Token | None = None
        self.error: BaseException | None = None
        self.event: anyio.Event | None = None
        self.state: _LoopState | None = None
        self.thread = 0
        self.call: Callable[[Callable[[], Any]], Any] | None = None
        self.wake_fd = -1
        self.tevent: threading.Event | None = None

    def wake(self) -> None:
        """Wake the waiter from any thread (it checks token and error)."""
        if self.tevent is not None:
            self.tevent.set()
        elif self.wake_fd >= 0:
            try:
                os.write(self.wake_fd, b"w")
            except OSError:
                pass
        elif self.call is not None:
            if threading.get_ident() == self.thread:
                self.wake_in_loop()
            else:
                try:
                    self.call(self.wake_in_loop)
                except RuntimeError:
                    pass  # that loop has ended; its waiter is gone with it

    def wake_in_loop(self) -> None:
        assert self.event is not None
        self.event.set()
        st = self.state
        if st is not None and st.leader is self and st.scope is not None:
            st.scope.cancel()


class _WakePipe:
    """A thread's own pipe for waking it from acquire_blocking (one per
    thread, reused: no pipe()/close() per wait)."""

    __slots__ = ("r", "w")

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)

    def __del__(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class _SemWake(threading.Event):
    """The wake-up of a waiter in SemaphoreTransport.wait_token: also ends
    that kernel wait."""

    def __init__(self, sem: SemaphoreTransport) -> None:
        super().__init__()
        self._sem = sem

    def set(self) -> None:
        super().set()
        self._sem.cancel_waits()


_thread_state = threading.local()


def _thread_wake_pipe() -> _WakePipe:
    pipe: _WakePipe | None = getattr(_thread_state, "pipe", None)
    if pipe is None:
        pipe = _thread_state.pipe = _WakePipe()
    return pipe


class Client:
    """A member of a jobserver pool.  Get one from :func:`fastjob.from_env`,
    :func:`fastjob.connect` or ``Server.client``.

    The first concurrent acquire in the process gets the implicit token
    (``implicit_token=True``, the default) without touching the pool.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        implicit_token: bool = True,
        jobs: int | None = None,
        source: str = "",
    ) -> None:
        self._t = transport
        self._lock = threading.Lock()
        self._jobs = jobs
        self._source = source
        self._held: dict[int, int] = {}
        self._waiters: deque[_Waiter] = deque()
        self._nwaiting = 0
        self._loops: dict[object, _LoopState] = {}
        self._acquired = 0
        self._closed = False
        self._gen = _fork_generation
        self._reader: _Reader | None = None
        self._pool_key = transport.identity()
        # A semaphore's try_read also starts its waiter thread (for the async
        # leader, which then waits on read_fd); try_acquire only looks.
        self._read = transport.try_take if isinstance(transport, SemaphoreTransport) else transport.try_read
        self._write = transport.write
        self._slow_read = not transport.nonblocking_read
        # The implicit token, when free, is the one item of this list: pop()
        # and append() are atomic, so taking it needs no lock.
        self._owns_implicit = implicit_token and self._claim_implicit()
        self._implicit: list[int] = [1] if self._owns_implicit else []
        self._core: Any = None
        if isinstance(transport, PipeTransport) and transport.nonblocking_read:
            self._core = _io.PoolCore(
                transport.read_fd,
                transport.shared_write_fd,
                transport.strategy == "rwf-nowait",
                self._held,
                self._on_write_error,
            )
            self._core.bind(
                self,
                self._implicit,
                self._waiters,
                self._try_acquire_slow,
                self._gen,
                self._lock,
                self._owns_implicit,
            )
            self.try_acquire = self._core.try_acquire  # type: ignore[method-assign]
        if transport.strategy == "thread":
            self._reader = _Reader(self)
        _live_clients.add(self)

    # -- the implicit token ---------------------------------------------------
    def _claim_implicit(self) -> bool:
        with _claims_lock:
            ref = _implicit_claims.get(self._pool_key)
            owner = ref() if ref is not None else None
            if owner is not None and not owner._closed:
                return False  # another client of this process has it already
            _implicit_claims[self._pool_key] = weakref.ref(self)
            return True

    # -- sync API -----------------------------------------------------------
    def try_acquire(self) -> Token | None:
        """A token if one is free right now (implicit first), else None.
        Never waits for a token to be released.  Returns None while other
        tasks or threads of this process are queued: they are served first.
        (Under the "thread" strategy on a blocking shared pipe, the macOS
        case, it may wait up to 50 ms for the reader thread to fetch a token
        that FIONREAD shows is there.)"""
        # Pipe pools replace this method per instance by PoolCore.try_acquire
        # (native): the same logic with the read in C.
        return self._try_acquire_slow()

    def _on_write_error(self, exc: OSError) -> None:
        if exc.errno in (errno.EPIPE, errno.EBADF):
            raise self._t.closed_error() from None
        raise exc

    def _take_implicit(self) -> Token | None:
        """The implicit token if it is free and nobody queues before us."""
        if self._implicit and not self._waiters:
            try:
                self._implicit.pop()  # atomic: only one caller gets it
            except IndexError:
                return None  # another thread took it just now
            self._acquired += 1
            return Token(self, -1, self._gen)
        return None

    def _try_acquire_slow(self) -> Token | None:
        if self._closed:
            raise self._closed_error()
        tok = self._take_implicit()
        if tok is not None:
            return tok
        if self._waiters:
            return None  # first come, first served: queued waiters go first
        if self._slow_read:
            assert self._reader is not None
            return self._reader.try_get()
        b = self._read()
        if b < 0:
            return None
        return self._adopt(b)

    def _adopt(self, b: int) -> Token:
        """Wrap a byte just read from the pool in a held Token."""
        tok = Token(self, b, self._gen)
        self._held[id(tok)] = b
        self._acquired += 1
        return tok

    def acquire_blocking(self, timeout: float | None = None) -> Token:
        """Wait in this thread (GIL released) for a token; TimeoutError after
        ``timeout`` seconds."""
        tok = self.try_acquire()
        if tok is not None:
            return tok
        if timeout is not None and timeout <= 0:
            raise TimeoutError("no jobserver token is free now (timeout=0)")
        deadline = None if timeout is None else time.monotonic() + timeout
        w = _Waiter()
        wake_r = -1
        sem = self._t if isinstance(self._t, SemaphoreTransport) else None
        if sem is not None:
            w.tevent = _SemWake(sem)
        elif self._reader is not None:
            w.tevent = threading.Event()
        else:
            pipe = _thread_wake_pipe()
            wake_r, w.wake_fd = pipe.r, pipe.w
            _io.drain(wake_r, 64)  # a late wake meant for an earlier wait
        tok = self._register(w)
        if tok is not None:
            return tok
        try:
            if sem is not None:
                return self._wait_sem(sem, w, deadline)
            if self._reader is not None:
                return self._wait_thread(w, deadline)
            return self._wait_poll(w, wake_r, deadline)
        except BaseException:
            self._abandon(w)
            raise

    def _wait_thread(self, w: _Waiter, deadline: float | None) -> Token:
        assert self._reader is not None and w.tevent is not None
        self._reader.kick()
        while True:
            if w.token is not None:
                return w.token
            if w.error is not None:
                raise w.error
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no jobserver token became free in time")
            w.tevent.wait(remaining)
            w.tevent.clear()

    def _wait_sem(self, sem: SemaphoreTransport, w: _Waiter, deadline: float | None) -> Token:
        """Windows: wait in the kernel on the semaphore (wait_token; Ctrl-C
        is seen within its slice); a token handed over in this process wakes
        it through _SemWake."""
        while True:
            if w.token is not None:
                return w.token
            if w.error is not None:
                raise w.error
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no jobserver token became free in time")
            if sem.wait_token(remaining):
                self._take_for(w, self._adopt(ord("+")))

    def _wait_poll(self, w: _Waiter, wake_r: int, deadline: float | None) -> Token:
        t = self._t
        interval = t.liveness_interval
        last_check = time.monotonic()
        while True:
            if w.token is not None:
                return w.token
            if w.error is not None:
                raise w.error
            now = time.monotonic()
            remaining = None if deadline is None else deadline - now
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no jobserver token became free in time")
            wait_for = remaining
            if interval is not None:
                wait_for = interval if wait_for is None else min(wait_for, interval)
            r = _io.wait_readable(t.read_fd, wake_r, wait_for)
            if r == 1:
                b = t.try_read()
                if b >= 0:
                    self._take_for(w, self._adopt(b))
            elif r == 2:
                _io.drain(wake_r, 64)
            if interval is not None and time.monotonic() - last_check >= interval:
                last_check = time.monotonic()
                if w.token is None:
                    t.check_alive()

    # -- async API ----------------------------------------------------------
    async def acquire(self) -> Token:
        """Wait for a token without blocking the event loop.

        The implicit token or a pool byte that is there now returns without an
        event-loop round trip on asyncio; on trio this is a full checkpoint.
        Cancellation at any point leaves no token held.
        """
        if _backend.is_trio():
            import trio

            await trio.lowlevel.checkpoint_if_cancelled()
            tok = self._try_on_loop()
            if tok is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return tok
        else:
            tok = self._try_on_loop()
            if tok is not None:
                return tok
        return await self._acquire_slow()

    def _try_on_loop(self) -> Token | None:
        """try_acquire for an event loop: on a blocking description only the
        implicit token, since the reader thread hand-off (Reader.try_get)
        waits up to 50 ms, which must not happen on the loop."""
        if self._slow_read and not (self._implicit and not self._waiters):
            return None
        return self.try_acquire()

    def token(self) -> _TokenContext:
        """``async with client.token() as tok:`` acquire, run, release
        (also on error and cancellation)."""
        return _TokenContext(self)

    async def _acquire_slow(self) -> Token:
        key, call, thread = _backend.loop_handle()
        st = self._loops.get(key)
        if st is None:
            st = self._loops.setdefault(key, _LoopState())
        w = _Waiter()
        w.event = anyio.Event()
        w.state = st
        w.thread = thread
        w.call = call
        tok = self._register(w)
        if tok is not None:
            return tok
        try:
            if self._reader is not None:
                self._reader.kick()
            while w.token is None:
                if w.error is not None:
                    raise w.error
                if self._reader is None and st.leader is None and st.queue and st.queue[0] is w:
                    await self._lead(w, st)
                else:
                    await w.event.wait()
                    w.event = anyio.Event()
            return w.token
        except BaseException:
            self._abandon(w)
            raise
        finally:
            if not st.queue and st.leader is None and self._loops.get(key) is st:
                del self._loops[key]  # no waiter of this loop left: forget it

    async def _lead(self, w: _Waiter, st: _LoopState) -> None:
        """The oldest waiter of a loop waits on the fd for all of them."""
        t = self._t
        interval = t.liveness_interval
        st.leader = w
        try:
            while w.token is None and w.error is None:
                b = t.try_read()
                if b >= 0:
                    self._take_for(w, self._adopt(b))
                    return
                with anyio.CancelScope() as scope:
                    st.scope = scope
                    if w.token is not None:
                        return
                    if interval is None:
                        await anyio.wait_readable(t.read_fd)
                    else:
                        with anyio.move_on_after(interval) as timer:
                            await anyio.wait_readable(t.read_fd)
                        if timer.cancelled_caught:
                            t.check_alive()
                st.scope = None
        except JobserverError as exc:
            # The pool is dead (EOF, owner gone) for every waiter, not just us.
            st.scope = None
            self._fail_waiters(exc)
            raise
        finally:
            st.leader = None
            st.scope = None
            # Hand the lead on, also when we leave by cancellation or error
            # (we are still queued then: skip ourselves).
            nxt = next((x for x in st.queue if x is not w and not x.gone), None)
            if nxt is not None:
                nxt.wake_in_loop()

    # -- waiter bookkeeping (all under self._lock) ----------------------------
    def _register(self, w: _Waiter) -> Token | None:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            tok = self._take_implicit()
            if tok is not None:
                return tok
            self._waiters.append(w)
            self._nwaiting += 1
            if w.state is not None:
                w.state.queue.append(w)
        return None

    def _unlink(self, w: _Waiter) -> None:
        """Remove w from the queues in O(1): it is marked gone and dropped
        when it reaches the head, so the head of a queue is always live (and
        a non-empty queue means someone waits)."""
        if w.gone:
            return
        w.gone = True
        self._nwaiting -= 1
        q = self._waiters
        while q and q[0].gone:
            q.popleft()
        st = w.state
        if st is not None:
            sq = st.queue
            while sq and sq[0].gone:
                sq.popleft()

    def _take_for(self, w: _Waiter, tok: Token) -> None:
        """tok was read for w; if w got a token meanwhile, pass tok on."""
        with self._lock:
            if w.token is None and w.error is None:
                w.token = tok
                self._unlink(w)
                return
        self._dispatch(tok)

    def _abandon(self, w: _Waiter) -> None:
        """w gave up (cancelled, timed out, failed): pass on what it got."""
        with self._lock:
            self._unlink(w)
            tok, w.token = w.token, None
        if tok is not None:
            self._dispatch(tok)

    def _dispatch(self, tok: Token) -> None:
        """A token nobody holds: to the oldest waiter, else back to the pool."""
        with self._lock:
            if self._waiters and not self._closed:
                w = self._waiters[0]
                self._unlink(w)
                w.token = tok
            else:
                w = None
                self._acquired -= 1  # counted when read, but nobody got it
        if w is not None:
            w.wake()
        else:
            tok.release()

    def _release(self, tok: Token, quiet: bool = False) -> None:
        if tok._byte >= 0:
            # dict.pop is atomic: exactly one caller gets the byte to write
            b = self._held.pop(id(tok), None)
            tok._client = None
            if b is None:
                return  # released already, returned by close(), or pre-fork
            try:
                self._write(b)
            except (OSError, JobserverError):
                if not quiet:
                    raise
            return
        with self._lock:
            if tok._client is None:
                return
            tok._client = None
            if tok._gen != self._gen:
                return  # taken before a fork: the parent process returns it
            if self._waiters and not self._closed:
                w = self._waiters[0]
                self._unlink(w)
                w.token = Token(self, -1, self._gen)
                self._acquired += 1
            else:
                if self._owns_implicit and not self._closed:
                    self._implicit.append(1)
                return
        w.wake()

    def _fail_waiters(self, error: BaseException) -> None:
        with self._lock:
            waiters = [w for w in self._waiters if not w.gone]
            for w in waiters:
                w.error = error
                self._unlink(w)
        for w in waiters:
            w.wake()

    def _closed_error(self) -> JobserverError:
        return JobserverError("this fastjob Client is closed; create a new one")

    # -- information ---------------------------------------------------------
    def available(self) -> int | None:
        """Free tokens in the pool right now (not counting the implicit one),
        or None when that cannot be known."""
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

    def statistics(self) -> ClientStatistics:
        """Tokens held, implicit held, tasks waiting, total acquired, strategy."""
        with self._lock:
            implicit_held = self._owns_implicit and not self._implicit and not self._closed
            return ClientStatistics(
                tokens_held=len(self._held) + int(implicit_held),
                implicit_held=implicit_held,
                tasks_waiting=self._nwaiting,
                tokens_acquired=self._acquired + (self._core.acquired if self._core else 0),
                wait_strategy=self._t.strategy,
            )

    @property
    def closed(self) -> bool:
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
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            if self._core is not None:
                self._core.closed = True
            held = list(self._held.values())
            self._held.clear()
            waiters = [w for w in self._waiters if not w.gone]
            for w in waiters:
                self._unlink(w)
            self._implicit.clear()
        error = self._closed_error()
        for w in waiters:
            w.error = error
            w.wake()
        for b in held:
            try:
                self._t.write(b)
            except (OSError, JobserverError):
                pass
        if self._reader is not None:
            self._reader.stop()
        self._t.close()
        _live_clients.discard(self)
        return len(held)

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
        self._lock = threading.Lock()
        self._gen = _fork_generation
        self._owns_implicit = False
        self._held.clear()
        self._waiters.clear()
        self._nwaiting = 0
        self._loops.clear()
        self._implicit.clear()
        if self._core is not None:
            self._core.bind(
                self, self._implicit, self._waiters, self._try_acquire_slow, self._gen, self._lock, False
            )
        if self._reader is not None:
            self._reader = _Reader(self)


class _TokenContext:
    """``async with client.token() as tok``: a plain class (not a generator)
    so the uncontended cycle stays cheap."""

    __slots__ = ("_client", "_token")

    def __init__(self, client: Client) -> None:
        self._client = client
        self._token: Token | None = None

    async def __aenter__(self) -> Token:
        if not _backend.is_trio():
            # asyncio fast path inline: one coroutine fewer per cycle
            tok = self._client.try_acquire()
            if tok is None:
                tok = await self._client._acquire_slow()
        else:
            tok = await self._client.acquire()
        self._token = tok
        return tok

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tok = self._token
        if tok is not None:
            self._token = None
            tok.release()


class _Reader:
    """The "thread" strategy: one daemon thread per client does the reads
    (GIL released) while anyone waits and hands each token to the oldest
    waiter; a token nobody waits for any more goes straight back."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._kick_r, self._kick_w = os.pipe()
        os.set_blocking(self._kick_r, False)
        os.set_blocking(self._kick_w, False)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._start_lock = threading.Lock()

    def kick(self) -> None:
        """There is demand (or a change): make the thread look again."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stopping:
                    self._thread = threading.Thread(
                        target=self._run, name="fastjob-reader", daemon=True
                    )
                    self._thread.start()
        try:
            os.write(self._kick_w, b"k")
        except OSError:
            pass

    def try_get(self, timeout: float = 0.05) -> Token | None:
        """try_acquire on a blocking description: only when FIONREAD shows a
        token, let the thread read it, waiting at most ``timeout``."""
        c = self._client
        if not (c.available() or 0):
            return None
        w = _Waiter()
        w.tevent = threading.Event()
        tok = c._register(w)
        if tok is not None:
            return tok
        self.kick()
        w.tevent.wait(timeout)
        with c._lock:
            got, w.token = w.token, None
            c._unlink(w)
        return got

    def _run(self) -> None:
        c = self._client
        t = c._t
        kick = self._kick_r
        interval = t.liveness_interval
        try:
            while not self._stopping:
                if not c._waiters:
                    _io.wait_readable(kick, -1, None)
                    _io.drain(kick, 64)
                    continue
                r = _io.wait_readable(t.read_fd, kick, interval)
                if r == 2:
                    _io.drain(kick, 64)
                    continue
                if r == 0:
                    if interval is not None:
                        t.check_alive()
                    continue
                if not c._waiters:
                    continue  # they gave up meanwhile: leave the token to others
                b = t.read_blocking() if not t.nonblocking_read else t.try_read()
                if b < 0:
                    continue
                if self._stopping:
                    t.write(b)
                    break
                c._dispatch(c._adopt(b))
        except JobserverError as exc:
            c._fail_waiters(exc)
        except OSError as exc:
            if not self._stopping:
                c._fail_waiters(JobserverError(f"jobserver read failed: {exc}"))

    def stop(self) -> None:
        self._stopping = True
        try:
            os.write(self._kick_w, b"s")
        except OSError:
            pass
        th = self._thread
        if th is not None and th is not threading.current_thread():
            th.join(timeout=1.0)
        if th is None or not th.is_alive():
            os.close(self._kick_r)
            os.close(self._kick_w)
        # else: blocked in read() after a snipe; it returns the token it gets.


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1
    # the parent's threads still use their wake pipes: never share them
    _thread_state.pipe = None
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
