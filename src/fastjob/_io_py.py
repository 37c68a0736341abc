"""Pure-Python token I/O: the same functions and results as the native
``_fastjob`` extension (os.read, os.preadv, select.poll, fcntl)."""

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
    """Write one token byte (EINTR retried)."""
    data = bytes((byte,))
    while True:
        try:
            if os.write(fd, data) == 1:
                return 0
        except InterruptedError:
            continue
        raise OSError(errno.EIO, os.strerror(errno.EIO))


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


from ._core.token import Token  # noqa: E402 - the pure Token, for the selector


class PoolCore:
    """Reads and writes the tokens of one pipe pool for one Client (the pure
    twin of the native hot path in _fastjob.pyx)."""

    def __init__(
        self, rfd: int, wfd: int, nowait: bool, held: dict[int, int], on_write_error: Any
    ) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.nowait = nowait
        self.held = held
        self.on_write_error = on_write_error
        self.closed = False
        self.gen = 0
        self.acquired = 0
        self.client: Any = None
        self.implicit: list[int] = []
        self.waiters: Any = ()
        self.slow: Any = None
        self.lock: Any = None
        self.owns_implicit = False

    def bind(
        self,
        client: Any,
        implicit: list[int],
        waiters: Any,
        slow: Any,
        gen: int,
        lock: Any,
        owns_implicit: bool,
    ) -> None:
        """Attach the client state the fast path must respect."""
        self.client = client
        self.implicit = implicit
        self.waiters = waiters
        self.slow = slow
        self.gen = gen
        self.lock = lock
        self.owns_implicit = owns_implicit

    def try_acquire(self) -> Any:
        """Client.try_acquire, fast path (see Client.try_acquire)."""
        if self.closed or self.waiters:
            return self.slow()
        if self.implicit:
            try:
                self.implicit.pop()  # atomic: the implicit token goes out once
            except IndexError:
                return self.slow()
            implicit = Token(self.client, -1, self.gen)
            implicit._core = self
            self.acquired += 1
            return implicit
        got = self.take(self.client, self.gen)
        if got is None:
            return None
        if isinstance(got, int):
            return self.slow()  # EOF: the slow path raises the proper error
        self.acquired += 1
        return got

    def take(self, client: Any, gen: int) -> Token | int | None:
        """A Token for a byte read now, None if the pool is empty, EOF (an
        int) when the pool is closed."""
        r = read_nowait(self.rfd) if self.nowait else try_read(self.rfd)
        if r == AGAIN:
            return None
        if r == EOF:
            return EOF
        tok = Token(client, r, gen)
        tok._core = self
        self.held[id(tok)] = r
        return tok

    def give(self, tok: Token) -> None:
        """Release a token: a pool token's byte is written back, once; the
        implicit token goes back to its slot (or, when tasks wait, through
        the client's slow path, which hands it on)."""
        if tok._byte < 0:
            with self.lock:
                if tok._client is None:
                    return
                if not (self.waiters or self.closed or tok._gen != self.gen):
                    tok._client = None
                    if self.owns_implicit:
                        self.implicit.append(1)
                    return
            self.client._release(tok)
            return
        b = self.held.pop(id(tok), None)
        tok._client = None
        if b is None:
            return
        try:
            write(self.wfd, b)
        except OSError as exc:
            self.on_write_error(exc)
