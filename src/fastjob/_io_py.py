"""Pure-Python token I/O and token core: the same names and results as the
native ``_fastjob`` extension (os.read, os.preadv, select.poll, fcntl).

Python code can be interrupted by a signal handler between any two
bytecodes, so the critical sections of the core (a read and the recording of
its token; taking a token's record and writing its byte) run with signals
blocked in the main thread (the only thread whose Python handlers run):
:func:`block_signals` / :func:`restore_signals`.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import sys
import time
from typing import Any

if sys.platform != "win32":  # Windows has neither; its pool is a semaphore (_core/sem.py)
    import fcntl
    import termios

AGAIN = -2
EOF = -3

_AGAIN_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK)


def try_read(fd: int) -> int:
    """One non-blocking read of one token byte (fd must be non-blocking)."""
    while True:
        try:
            data = os.read(fd, 1)
        except InterruptedError:
            continue
        except BlockingIOError:
            return AGAIN
        return data[0] if data else EOF


def read_blocking(fd: int) -> int:
    """One read that may block (reader thread only); os.read drops the GIL."""
    return try_read(fd)


_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None)


def read_nowait(fd: int) -> int:
    """preadv2(RWF_NOWAIT): a non-blocking read on a blocking, shared fd."""
    if _RWF_NOWAIT is None or not hasattr(os, "preadv"):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    buf = bytearray(1)
    while True:
        try:
            n = os.preadv(fd, [buf], -1, _RWF_NOWAIT)
        except InterruptedError:
            continue
        except BlockingIOError:
            return AGAIN
        return buf[0] if n else EOF


def write(fd: int, byte: int) -> int:
    """Write one token byte (EINTR retried; may block on a blocking fd)."""
    data = bytes((byte,))
    while True:
        try:
            if os.write(fd, data) == 1:
                return 0
        except InterruptedError:
            continue
        raise OSError(errno.EIO, os.strerror(errno.EIO))


_RWF_NOWAIT_W = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "pwritev") else None


def try_write(fd: int, byte: int) -> int:
    """Write one token byte to a non-blocking fd: 0, or AGAIN when full."""
    data = bytes((byte,))
    while True:
        try:
            if os.write(fd, data) == 1:
                return 0
        except InterruptedError:
            continue
        except BlockingIOError:
            return AGAIN
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def write_nowait(fd: int, byte: int) -> int:
    """Write one token byte without ever blocking and without touching the
    description's flags: 0, or AGAIN when the pipe is full."""
    global _RWF_NOWAIT_W
    data = bytes((byte,))
    if _RWF_NOWAIT_W is not None:
        while True:
            try:
                if os.pwritev(fd, [data], -1, _RWF_NOWAIT_W) == 1:
                    return 0
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            except InterruptedError:
                continue
            except BlockingIOError:
                return AGAIN
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                _RWF_NOWAIT_W = None  # this kernel cannot: poll, then write
                break
    while True:
        try:
            events = select.poll()
            events.register(fd, select.POLLOUT)
            ready = events.poll(0)
        except InterruptedError:
            continue
        break
    if not ready:
        return AGAIN
    flags = ready[0][1]
    if flags & select.POLLNVAL:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    if flags & (select.POLLERR | select.POLLHUP):
        raise OSError(errno.EPIPE, os.strerror(errno.EPIPE))
    return write(fd, byte)


def wait_readable(fd: int, cancel_fd: int = -1, timeout: float | None = None) -> int:
    """Block until fd is readable: 1, cancel_fd is: 2, timeout: 0."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if cancel_fd >= 0:
        poller.register(cancel_fd, select.POLLIN)
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while True:
        wait_ms = None
        if deadline is not None:
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
        events = poller.poll(wait_ms)
        if not events:
            if deadline is None or time.monotonic() < deadline:
                continue
            return 0
        ready = dict(events)
        if cancel_fd >= 0 and cancel_fd in ready:
            return 2
        if ready.get(fd, 0) & select.POLLNVAL:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return 1


def available(fd: int) -> int:
    """Bytes (tokens) in the pipe right now (FIONREAD)."""
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


def fill(fd: int, byte: int, n: int) -> int:
    """Write n token bytes to a non-blocking fd; returns how many fitted."""
    done = 0
    chunk = bytes((byte,)) * min(n, 4096)
    while done < n:
        try:
            done += os.write(fd, chunk[: n - done])
        except InterruptedError:
            continue
        except BlockingIOError:
            break
    return done


def drain(fd: int, cap: int = 1 << 20) -> bytes:
    """Read every byte available now from a non-blocking fd (at most cap)."""
    out = bytearray()
    while len(out) < cap:
        try:
            data = os.read(fd, cap - len(out))
        except InterruptedError:
            continue
        except BlockingIOError:
            break
        if not data:
            break
        out += data
    return bytes(out)


def reopen_private(fd: int, flags: int) -> int:
    """Open /proc/self/fd/N: a new description of the same pipe (Linux)."""
    return os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)


def fd_info(fd: int) -> tuple[int, int, int, int, int, int]:
    """(st_mode, st_dev, st_ino, st_uid, F_GETFL flags, F_GETFD flags) of fd."""
    st = os.fstat(fd)
    return (
        st.st_mode,
        st.st_dev,
        st.st_ino,
        st.st_uid,
        fcntl.fcntl(fd, fcntl.F_GETFL),
        fcntl.fcntl(fd, fcntl.F_GETFD),
    )


# -- signals: the critical sections of the pure core --------------------------
import signal as _signal  # noqa: E402
import threading as _threading  # noqa: E402
import warnings as _warnings  # noqa: E402

_sigmask = getattr(_signal, "pthread_sigmask", None)
_ALL_SIGNALS: Any = _signal.valid_signals() if _sigmask is not None else ()
_main_ident = _threading.main_thread().ident
_get_ident = _threading.get_ident
_NOTHING: Any = None


def block_signals() -> Any:
    """Block every signal in this thread if it is the main thread (the only
    one whose Python handlers run); returns what restore_signals needs."""
    if _sigmask is None or _get_ident() != _main_ident:
        return _NOTHING
    return _sigmask(_signal.SIG_BLOCK, _ALL_SIGNALS)


def restore_signals(old: Any) -> None:
    """Undo block_signals; a signal that came meanwhile is handled now."""
    if old is not None:
        _sigmask(_signal.SIG_SETMASK, old)  # type: ignore[misc]


def _after_fork() -> None:
    global _main_ident
    _main_ident = _threading.main_thread().ident


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


# -- the token core (the twin of Core and Token in _fastjob.pyx) ---------------
READ_FD = 0
READ_NOWAIT = 1
READ_NONE = 2
READ_PY = 3
WRITE_FD = 0
WRITE_NOWAIT = 1
WRITE_LOCKED = 2
WRITE_PY = 3

_TokenLeakWarning: type[Warning] = UserWarning


#: write errors that mean the pool is gone (every reader closed it, or our fd)
_POOL_GONE = (errno.EPIPE, errno.EBADF, errno.ENXIO)


def _set_leak_warning(cls: type[Warning]) -> None:
    global _TokenLeakWarning
    _TokenLeakWarning = cls


class Token:
    """A held job slot.  ``release()`` is sync, idempotent and thread-safe and
    writes back the byte that was read; the implicit token writes nothing.

    Use it as a context manager, or release it yourself.  A Token garbage
    collected unreleased is released with a TokenLeakWarning.
    """

    # _hold is [core] while held, [] once released: list.pop() is atomic, so
    # exactly one releasing thread gets the core.
    __slots__ = ("_hold", "_byte", "_gen", "__weakref__")

    _hold: list[Core]
    _byte: int
    _gen: int

    def __init__(self) -> None:
        raise TypeError("Tokens come from a fastjob Client (acquire, try_acquire, ...)")

    @property
    def _core(self) -> Core | None:
        """The Core that holds this token; None once released."""
        hold = self._hold
        return hold[0] if hold else None

    @property
    def implicit(self) -> bool:
        """True for the process's implicit token (never in the pool)."""
        return self._byte < 0

    @property
    def byte(self) -> bytes | None:
        """The byte read from the pool (echoed on release); None if implicit."""
        return None if self._byte < 0 else bytes((self._byte,))

    @property
    def released(self) -> bool:
        """True once the token has been given back."""
        return not self._hold

    def release(self) -> None:
        """Give the token back (writes its byte to the pool; a no-op the
        second time)."""
        if self._hold:
            old = block_signals()
            try:
                self._give()
            finally:
                restore_signals(old)

    def _give(self) -> None:
        try:
            core = self._hold.pop()
        except IndexError:
            return
        core._give(self)

    def __enter__(self) -> Token:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.release()

    def __del__(self) -> None:
        if not self._hold:
            return
        # Release first (a warning turned into an error must not lose it),
        # with signals blocked: a handler must not raise before the give.
        old = block_signals()
        try:
            core = self._hold[0]
            try:
                self._give()
            except BaseException:  # noqa: BLE001 - the pool is gone: nothing to write to
                self._hold.clear()
                core._lost(self)
        finally:
            restore_signals(old)
        kind = "implicit" if self._byte < 0 else f"byte={bytes((self._byte,))!r}"
        _warnings.warn(
            f"fastjob: <fastjob.Token {kind}> was garbage collected without release(); "
            "it has been returned to the pool",
            _TokenLeakWarning,
            stacklevel=2,
        )

    def __repr__(self) -> str:
        kind = "implicit" if self._byte < 0 else f"byte={bytes((self._byte,))!r}"
        state = "released" if not self._hold else "held"
        return f"<fastjob.Token {kind} {state}>"


_new_token = object.__new__


class Core:
    """The token state of one Client on one pool (the twin of _fastjob.Core)."""

    def __init__(
        self,
        transport: Any,
        rfd: int,
        wfd: int,
        read_mode: int,
        write_mode: int,
        owns_implicit: bool,
        gen: int,
        slow: Any,
        handoff: Any,
        on_write_error: Any,
        full_error: Any,
    ) -> None:
        self.transport = transport
        self.rfd = rfd
        self.wfd = wfd
        self.read_mode = read_mode
        self.write_mode = write_mode
        self.owns_implicit = owns_implicit
        self.implicit_free = owns_implicit
        self.gen = gen
        self.slow = slow
        self.handoff = handoff
        self.on_write_error = on_write_error
        self.full_error = full_error
        self.closed = False
        self.acquired = 0
        self.nwait = 0
        self.held = 0
        self._counts = [0] * 256
        self._reader = (try_read, read_nowait)[read_mode] if read_mode < 2 else None

    def _new(self, b: int) -> Token:
        tok: Token = _new_token(Token)
        tok._hold = [self]
        tok._byte = b
        tok._gen = self.gen
        if b >= 0:
            self._counts[b] += 1
            self.held += 1
        self.acquired += 1
        return tok

    def _read(self) -> int:
        if self._reader is not None:
            return int(self._reader(self.rfd))
        if self.read_mode == READ_NONE:
            return AGAIN
        return int(self.transport.try_read())

    def try_acquire(self) -> Token | None:
        """Client.try_acquire (see _fastjob.Core.try_acquire)."""
        if self.closed or self.nwait:
            return self.slow()  # type: ignore[no-any-return]
        old = block_signals()
        try:
            if self.implicit_free:
                self.implicit_free = False
                tok = self._new(-1)
            elif self.read_mode == READ_NONE:
                tok = None
            else:
                tok = self._take()
        finally:
            restore_signals(old)
        if tok is None and self.read_mode == READ_NONE:
            return self.slow()  # type: ignore[no-any-return]
        return tok

    def _take(self) -> Token | None:
        r = self._read()
        if r == AGAIN:
            return None
        if r == EOF:
            raise self.transport.closed_error()
        return self._new(r)

    def take(self) -> Token | None:
        """A Token for a pool byte read now, or None; JobserverClosedError
        at EOF.  Ignores the queue (the caller is the queue's pump)."""
        old = block_signals()
        try:
            return self._take()
        finally:
            restore_signals(old)

    def take_implicit(self) -> Token | None:
        """The implicit token if it is free, else None (ignores the queue)."""
        old = block_signals()
        try:
            if self.implicit_free and not self.closed:
                self.implicit_free = False
                return self._new(-1)
            return None
        finally:
            restore_signals(old)

    def adopt(self, byte: int) -> Token:
        """A held Token for a byte read by someone else (the reader thread)."""
        return self._new(byte)

    def _write(self, b: int) -> int:
        mode = self.write_mode
        if mode == WRITE_FD:
            return try_write(self.wfd, b)
        if mode == WRITE_NOWAIT:
            return write_nowait(self.wfd, b)
        t = self.transport
        if mode == WRITE_LOCKED:
            with t._lock:
                fd = t._wfd
                if fd >= 0:
                    return try_write(fd, b)
        t.write(b)
        return 0

    def _give(self, tok: Token) -> None:
        """tok's record was just taken (tok._hold emptied); signals blocked."""
        if tok._gen != self.gen:
            return  # taken before a fork: the parent process gives it back
        b = tok._byte
        if b < 0:
            if self.closed or not self.owns_implicit:
                return
            self.implicit_free = True
            if self.nwait:
                self.handoff()  # the client passes it to the oldest waiter
            return
        if self.closed:
            return  # close() wrote it back already
        try:
            r = self._write(b)
        except OSError as exc:
            if exc.errno in _POOL_GONE:
                self._lost(tok)  # the pool is gone: the byte has nowhere to go
            else:
                tok._hold.append(self)  # not written (out of fds...): still held
            self.on_write_error(exc)
            raise
        except Exception as exc:
            # The transport's own error: a FIFO writer that cannot be reopened
            # keeps the token held (release() again, or close(), writes it).
            if getattr(exc, "pool_gone", False):
                self._lost(tok)
            else:
                tok._hold.append(self)
            raise
        if r == AGAIN:
            tok._hold.append(self)  # still held: a later release() may succeed
            raise self.full_error()
        self._lost(tok)

    def _lost(self, tok: Token) -> None:
        """Forget a pool token's record (written back, or unwritable)."""
        b = tok._byte
        if b >= 0 and tok._gen == self.gen and self._counts[b] > 0:
            self._counts[b] -= 1
            self.held -= 1

    def give(self, tok: Token) -> None:
        """Release tok (Token.release)."""
        tok.release()

    def held_bytes(self) -> list[int]:
        """The bytes of the pool tokens still held, forgetting them (close)."""
        out = [b for b in range(256) for _ in range(self._counts[b])]
        self._counts = [0] * 256
        self.held = 0
        return out

    def after_fork(self, gen: int) -> None:
        """In a forked child: it holds none of the parent's tokens."""
        self.held_bytes()
        self.gen = gen
        self.owns_implicit = False
        self.implicit_free = False
        self.nwait = 0
