"""Transports: how one process reads and writes the pool's tokens.

Each transport opens and validates its pool and picks a wait strategy from
the ladder in DESIGN.md.  It never changes O_NONBLOCK on a description it
did not open, and never closes fds it inherited.
"""

from __future__ import annotations

import errno
from abc import ABC, abstractmethod
import os
import stat
import sys
import threading
import weakref
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from typing import Final

from .. import _io
from .._errors import (
    BadFdError,
    FifoError,
    ForeignFifoError,
    JobserverClosedError,
    JobserverError,
    NotAPipeError,
    PipeMismatchError,
    UnsupportedPlatformError,
)
from .._makeflags import JobserverAuth

AGAIN: Final = _io.AGAIN

STRATEGIES = ("fifo-private", "proc-reopen", "rwf-nowait", "shared-nonblocking", "thread")
#: How often a waiter on a FIFO pool checks that the pool's owner still exists.
FIFO_LIVENESS_INTERVAL = 1.0


def forced_strategy() -> str | None:
    """FASTJOB_WAIT_STRATEGY, validated (None when unset)."""
    value = os.environ.get("FASTJOB_WAIT_STRATEGY", "").strip()
    if not value or value == "auto":
        return None
    if value not in STRATEGIES:
        raise JobserverError(
            f"FASTJOB_WAIT_STRATEGY={value!r} is not a wait strategy; "
            f"use one of {', '.join(STRATEGIES)} or unset it"
        )
    return value


class Transport(ABC):
    """Token I/O on one pool.  Subclasses set style, strategy and the fds."""

    style: str = ""
    strategy: str = ""
    #: fd to wait readable on (our private description where we have one)
    read_fd: int = -1
    #: True when read_fd may be read without blocking (O_NONBLOCK or RWF_NOWAIT)
    nonblocking_read: bool = True
    #: seconds between owner-liveness checks while waiting; None: never
    liveness_interval: float | None = None

    @abstractmethod
    def try_read(self) -> int:
        """A token byte, or AGAIN.  JobserverClosedError at EOF."""

    def read_blocking(self) -> int:
        """A token byte or AGAIN; may block (reader thread only)."""
        r = _io.read_blocking(self.read_fd)
        if r == _io.EOF:
            raise self.closed_error()
        return r

    @abstractmethod
    def write(self, byte: int) -> None:
        """Put one token byte back into the pool."""

    def available(self) -> int | None:
        try:
            return _io.available(self.read_fd)
        except OSError:
            return None

    def check_alive(self) -> None:
        """Raise JobserverClosedError when the pool's owner is gone."""

    @abstractmethod
    def auth(self) -> JobserverAuth:
        """How a child names this pool."""

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return ()

    def identity(self) -> object:
        """Names the pool (not this description): equal for two transports
        on one pool, so a process claims its implicit token once."""
        return id(self)

    def closed_error(self) -> JobserverClosedError:
        return JobserverClosedError(
            f"the jobserver pool ({self.describe()}) is closed: every process that could "
            "write tokens to it is gone (EOF), so its owner (make, cargo or fastjob) has exited"
        )

    def describe(self) -> str:
        return self.style

    def close(self) -> None:
        pass


def _fd_error(fd: int, exc: OSError, role: str) -> BadFdError:
    return BadFdError(
        f"cannot open file descriptor {fd} (the {role} end) from the jobserver "
        f"environment variable value: {exc.strerror} (os error {exc.errno})"
    )


def validate_pipe_fds(read_fd: int, write_fd: int) -> tuple[_io.FdInfo, _io.FdInfo]:
    """Check both fds are open, are pipes, are the same pipe, and face the
    right way.  Raises the specific BadFdError subclass."""
    infos = []
    for fd, role in ((read_fd, "read"), (write_fd, "write")):
        try:
            info = _io.fd_info(fd)
        except OSError as exc:
            raise _fd_error(fd, exc, role) from None
        if not info.is_fifo:
            raise NotAPipeError(
                f"file descriptor {fd} (the {role} end) is open but is a {info.kind}, "
                "not a pipe: the jobserver fds were closed and the number reused"
            )
        infos.append(info)
    rinfo, winfo = infos
    if (rinfo.dev, rinfo.ino) != (winfo.dev, winfo.ino):
        raise PipeMismatchError(
            f"file descriptors {read_fd} and {write_fd} are two different pipes "
            f"(inodes {rinfo.ino} and {winfo.ino}), not the two ends of one jobserver pipe"
        )
    if not rinfo.readable:
        raise BadFdError(
            f"file descriptor {read_fd} is the write end of the pipe but is named as "
            "the read end (are R and W swapped?)"
        )
    if not winfo.writable:
        raise BadFdError(
            f"file descriptor {write_fd} is the read end of the pipe but is named as "
            "the write end (are R and W swapped?)"
        )
    return rinfo, winfo


class PipeTransport(Transport):
    """An anonymous pipe given as two fds (inherited, or created by Server)."""

    style = "pipe"

    def __init__(
        self, read_fd: int, write_fd: int, *, owned: bool = False, private_writer: bool = False
    ) -> None:
        """Validate the fds and choose the wait strategy.  ``owned`` fds
        are closed by close(); inherited ones never.  ``private_writer``: the
        caller closes the fds only after this transport (our Server does),
        so a private writer of ours cannot keep the pool from reaching EOF."""
        self.shared_read_fd = read_fd
        self.shared_write_fd = write_fd
        self._owned = owned
        self._writer_ok = owned or private_writer
        self._private_fd = -1
        #: a private O_NONBLOCK description of the write end, or -1: release()
        #: writes there with a plain write(2), cheaper than pwritev2 on the
        #: shared one.  Only for fds closed after this transport (``owned``,
        #: ``private_writer``): an inherited pool must reach EOF once every
        #: shared writer is closed, which a writer of our own would prevent.
        self.private_write_fd = -1
        rinfo, _ = validate_pipe_fds(read_fd, write_fd)
        self._ino = rinfo.ino
        forced = forced_strategy()
        if forced == "fifo-private":
            forced = None  # pipes have no path to open: use the ladder
        self.strategy = self._choose(forced, rinfo)

    def _choose(self, forced: str | None, rinfo: _io.FdInfo) -> str:
        if forced == "thread":
            self.read_fd = self.shared_read_fd
            self.nonblocking_read = rinfo.nonblocking
            return "thread"
        if forced in (None, "proc-reopen") and sys.platform.startswith("linux"):
            try:
                self._private_fd = _io.reopen_private(
                    self.shared_read_fd, os.O_RDONLY | os.O_NONBLOCK
                )
            except OSError as exc:
                if forced:
                    raise JobserverError(
                        f"FASTJOB_WAIT_STRATEGY=proc-reopen: cannot reopen "
                        f"/proc/self/fd/{self.shared_read_fd}: {exc.strerror}"
                    ) from None
            else:
                self.read_fd = self._private_fd
                if self._writer_ok:
                    self._open_private_writer()
                return "proc-reopen"
        if forced in (None, "rwf-nowait") and sys.platform.startswith("linux"):
            self.read_fd = self.shared_read_fd
            return "rwf-nowait"
        if forced == "rwf-nowait":
            raise UnsupportedPlatformError(
                "FASTJOB_WAIT_STRATEGY=rwf-nowait needs Linux preadv2(RWF_NOWAIT)"
            )
        self.read_fd = self.shared_read_fd
        if forced in (None, "shared-nonblocking") and rinfo.nonblocking:
            return "shared-nonblocking"
        self.nonblocking_read = False
        return "thread"

    def _open_private_writer(self) -> None:
        # Out of fds, the shared description will do.
        try:
            fd = _io.reopen_private(self.shared_write_fd, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        if _io.fd_info(fd).ino != self._ino:
            os.close(fd)  # the fd was closed and reused meanwhile: not our pipe
            return
        self.private_write_fd = fd

    def try_read(self) -> int:
        if self.strategy == "rwf-nowait":
            r = _io.read_nowait(self.read_fd)
        elif self.nonblocking_read:
            r = _io.try_read(self.read_fd)
        else:
            return AGAIN  # a blocking description: only the reader thread reads
        if r == _io.EOF:
            raise self.closed_error()
        return r

    def write(self, byte: int) -> None:
        try:
            _io.write(self.shared_write_fd, byte)
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):
                raise self.closed_error() from None
            raise

    def identity(self) -> object:
        return ("pipe", self._ino)

    def auth(self) -> JobserverAuth:
        return JobserverAuth("pipe", read_fd=self.shared_read_fd, write_fd=self.shared_write_fd)

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.shared_read_fd, self.shared_write_fd)

    def describe(self) -> str:
        return f"pipe {self.shared_read_fd},{self.shared_write_fd}"

    def close(self) -> None:
        for fd in (self._private_fd, self.private_write_fd):
            if fd >= 0:
                os.close(fd)
        self._private_fd = self.private_write_fd = -1
        if self._owned:
            for fd in (self.shared_read_fd, self.shared_write_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._owned = False


def _describe_mode(mode: int) -> str:
    info = _io.FdInfo(mode, 0, 0, 0, 0, 0)
    return info.kind


#: Every open of a FIFO path: never follow a symlink, never block (a FIFO
#: with no writer would), never become our controlling tty, never inherited.
#: (getattr: the module also imports on Windows, which has no FIFO pools.)
_FIFO_OPEN_FLAGS: Final = (
    getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NOCTTY", 0)
)
_live_fifos: weakref.WeakSet[FifoTransport] = weakref.WeakSet()


class FifoTransport(Transport):
    """A named FIFO (make >= 4.4 ``fifo:PATH``): opened by us, so our
    O_NONBLOCK is private (strategy "fifo-private").

    The path is checked (lstat: a FIFO, not a symlink, ours) and then every
    open of it (read end, write end, the writer reopened by the liveness
    check) is compared with what was checked (fstat: type, device, inode,
    owner), so a file swapped in at the path between check and open is
    refused instead of read from or written to.

    The write end stays open: a release writes through it and needs no new
    descriptor.  The liveness check, which must give our writer up for a
    moment, first reserves a descriptor to reopen it in, and skips the check
    when it cannot (out of fds).
    """

    style = "fifo"

    def __init__(self, path: str, *, allow_foreign: bool = False, owner: bool = False) -> None:
        self.path = path
        # Re-entrant: a Token's finalizer (run by the garbage collector at
        # any allocation, so also inside a section that holds this lock, on
        # this very thread) releases through it.
        self._lock = threading.RLock()
        self._rfd = -1
        self._wfd = -1
        self._allow_foreign = allow_foreign
        # A byte the liveness check read but could not put back (no writer):
        # handed out by try_read first, written back when a writer opens.
        self._pending: list[int] = []
        st = self._stat_checked(path, allow_foreign)
        self._identity = (st.st_dev, st.st_ino)
        self._uid = st.st_uid
        try:
            self._rfd = self._open_checked(os.O_RDONLY)
            self._wfd = self._open_checked(os.O_WRONLY)
        except BaseException:
            self.close()
            raise
        self.read_fd = self._rfd
        self.strategy = "thread" if forced_strategy() == "thread" else "fifo-private"
        # The owner knows it is alive; a client checks while it waits.
        self.liveness_interval = None if owner else FIFO_LIVENESS_INTERVAL
        if not owner:
            try:
                self._check_writers(at_open=True)
            except BaseException:
                self.close()  # a leaked writer would make the stale FIFO look alive
                raise
        _live_fifos.add(self)

    @staticmethod
    def _stat_checked(path: str, allow_foreign: bool) -> os.stat_result:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise FifoError(
                f"the jobserver FIFO {path!r} does not exist: the make that created it "
                "has exited, or this process runs in a sandbox or container that does "
                "not see the creator's temporary directory"
            ) from None
        except OSError as exc:
            raise FifoError(f"cannot stat the jobserver FIFO {path!r}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise FifoError(
                f"the jobserver FIFO path {path!r} is a symlink; fastjob only opens the "
                "FIFO itself (make never creates a symlink there)"
            )
        if not stat.S_ISFIFO(st.st_mode):
            raise FifoError(
                f"the jobserver path {path!r} is a {_describe_mode(st.st_mode)}, not a FIFO"
            )
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid() and not allow_foreign:
            raise ForeignFifoError(_foreign_message(path, st.st_uid))
        return st

    def _open_own_writer(self) -> int:
        if self._rfd >= 0 and sys.platform.startswith("linux"):
            try:
                # (no O_NOFOLLOW: /proc's fd entries are links by design)
                fd = os.open(
                    f"/proc/self/fd/{self._rfd}",
                    os.O_WRONLY | (_FIFO_OPEN_FLAGS & ~getattr(os, "O_NOFOLLOW", 0)),
                )
            except OSError:
                pass  # no /proc (a sandbox), or out of fds: by path then
            else:
                st = os.fstat(fd)
                if stat.S_ISFIFO(st.st_mode) and (st.st_dev, st.st_ino) == self._identity:
                    return fd
                os.close(fd)
        return self._open_checked(os.O_WRONLY)

    def _open_checked(self, mode: int) -> int:
        """Open the path (read or write end) and make sure the file opened is
        the FIFO that was checked; FifoError / ForeignFifoError otherwise."""
        path = self.path
        try:
            fd = os.open(path, mode | _FIFO_OPEN_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW met a symlink
                raise FifoError(
                    f"the jobserver FIFO path {path!r} was replaced by a symlink after it "
                    "was checked; refusing to follow it"
                ) from None
            raise FifoError(f"cannot open the jobserver FIFO {path!r}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISFIFO(st.st_mode):
                raise FifoError(
                    f"the jobserver path {path!r} was replaced after it was checked: it "
                    f"opened a {_describe_mode(st.st_mode)}, not the FIFO; refusing it"
                )
            if st.st_uid != self._uid and not self._allow_foreign:
                # another user's FIFO swapped in, or ours given away meanwhile
                raise ForeignFifoError(_foreign_message(path, st.st_uid, replaced=True))
            if (st.st_dev, st.st_ino) != self._identity:
                raise FifoError(
                    f"the jobserver FIFO {path!r} was replaced by another FIFO after it "
                    f"was checked (inode {st.st_ino}, not {self._identity[1]}); refusing it"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd

    def try_read(self) -> int:
        if self._pending:
            # (the caller records it: a raise at this return loses nothing
            # more than any read's return would)
            try:
                return self._pending.pop()
            except IndexError:
                pass  # another thread took it just now
        r = _io.try_read(self._rfd)
        if r == _io.EOF:
            raise self.closed_error()
        return r

    def write(self, byte: int) -> None:
        with self._lock:
            if self._wfd < 0:
                self._reopen_writer()  # raises FifoError: the caller keeps its token
            try:
                _io.write(self._wfd, byte)
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ENXIO):
                    raise self.closed_error() from None
                raise

    def _reopen_writer(self) -> None:
        """Open the write end again (lock held) and write back a byte the
        liveness check could not put back.

        Through our own read descriptor where the OS allows it (Linux:
        /proc/self/fd/N opens the very FIFO that fd is, whatever is at the
        path now), so a path swapped meanwhile cannot strand that byte; else
        by path, checked like every open of it."""
        fd = self._open_own_writer()
        if self._wfd >= 0:
            # a finalizer's release reopened it meanwhile (see _lock)
            os.close(fd)
        else:
            self._wfd = fd
        pending = self._pending
        while pending:
            # Written in one C call that records it, and only then taken off
            # the list: a signal handler raising between a pop and its write
            # (or a write and its pop) would lose (or double) the byte.
            done: list[int] = []
            try:
                done.extend(map(os.write, (self._wfd,), (bytes(pending[-1:]),)))
            finally:
                if done and pending:
                    del pending[-1]

    def _check_writers(self, *, at_open: bool = False) -> None:
        """With our own writer closed, a non-blocking read returns EOF iff no
        other process holds the FIFO open for writing: the pool is dead."""
        with self._lock:
            try:
                # The descriptor our writer will be reopened in, reserved
                # before we give the writer up: a release must find it open.
                spare = os.dup(self._rfd)
            except OSError as exc:
                if at_open:
                    raise FifoError(
                        f"cannot check the jobserver FIFO {self.path!r}: {exc.strerror}"
                    ) from None
                return  # out of fds: keep the writer, check next time
            r = AGAIN
            # The byte lands in ``got`` inside the read's own C call: a
            # signal handler that raises as the read returns (before an
            # assignment) would lose it.  (EOF: an empty read; AGAIN: none.)
            got: list[bytes] = []
            try:
                if self._wfd >= 0:
                    os.close(self._wfd)
                    self._wfd = -1
                try:
                    got.extend(map(os.read, (self._rfd,), (1,)))
                except BlockingIOError:
                    pass
                r = (got[0][0] if got[0] else _io.EOF) if got else AGAIN
            finally:
                if got and got[0]:
                    self._pending.append(got[0][0])  # not ours to keep: put it straight back
                os.close(spare)  # two free slots now (ours and the writer's)
                try:
                    self._reopen_writer()
                except (OSError, JobserverError):
                    if at_open:
                        raise
                    # Another thread took both slots, or the path was
                    # swapped: write() reopens (or raises, token kept).
        if r == _io.EOF:
            where = "is stale" if at_open else "was abandoned"
            raise JobserverClosedError(
                f"the jobserver FIFO {self.path!r} {where}: no process holds it open for "
                "writing, so the make or fastjob that owned it has exited (killed?)"
            )

    def check_alive(self) -> None:
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._identity
        except OSError:
            same = False
        if not same:
            raise JobserverClosedError(
                f"the jobserver FIFO {self.path!r} was removed: the make or fastjob that "
                "owned the pool has exited"
            )
        self._check_writers()

    def available(self) -> int | None:
        n = super().available()
        return None if n is None else n + len(self._pending)

    def identity(self) -> object:
        return ("fifo", *self._identity)

    def auth(self) -> JobserverAuth:
        return JobserverAuth("fifo", path=self.path)

    def describe(self) -> str:
        return f"fifo:{self.path}"

    def close(self) -> None:
        with self._lock:
            if self._rfd >= 0:
                os.close(self._rfd)
            self._rfd = -1
            if self._pending and self._wfd < 0:
                try:
                    self._reopen_writer()  # in the slot the reader just freed
                except (OSError, JobserverError):
                    pass
            if self._wfd >= 0:
                while self._pending:
                    try:
                        _io.write(self._wfd, self._pending.pop())
                    except OSError:
                        break
                os.close(self._wfd)
            self._wfd = -1

    def _after_fork(self) -> None:
        self._lock = threading.RLock()  # another thread may have held it at fork


def _foreign_message(path: str, uid: int, *, replaced: bool = False) -> str:
    what = "was replaced by a FIFO that belongs" if replaced else "belongs"
    return (
        f"the jobserver FIFO {path!r} {what} to uid {uid}, not to you "
        f"(uid {os.geteuid()}); another user could steal or forge tokens. Pass "
        "allow_foreign=True (or set FASTJOB_ALLOW_FOREIGN_FIFO=1) if you trust it"
    )


def _after_fork_in_child() -> None:
    for t in list(_live_fifos):
        t._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def open_transport(auth: JobserverAuth, *, allow_foreign: bool = False) -> Transport:
    """Open and validate the pool auth names."""
    if sys.platform == "win32" and auth.style != "sem":
        raise UnsupportedPlatformError(
            f"the jobserver is a POSIX {'pipe (inherited fds)' if auth.style == 'pipe' else 'FIFO'}, "
            "which a Windows process cannot use: make for Windows names a semaphore "
            "(--jobserver-auth=gmake_semaphore_<pid>); run this under a native Windows make "
            "(not one from MSYS2 or Cygwin), or a fastjob Server"
        )
    if auth.style == "pipe":
        assert auth.read_fd is not None and auth.write_fd is not None
        return PipeTransport(auth.read_fd, auth.write_fd)
    if auth.style == "fifo":
        assert auth.path is not None
        if not allow_foreign:
            allow_foreign = os.environ.get("FASTJOB_ALLOW_FOREIGN_FIFO", "") not in ("", "0")
        return FifoTransport(auth.path, allow_foreign=allow_foreign)
    if sys.platform == "win32":
        from .sem import SemaphoreTransport

        return SemaphoreTransport(str(auth.name))
    raise UnsupportedPlatformError(
        f"the jobserver {auth.name!r} is a Windows semaphore name; semaphore jobservers "
        "exist only on Windows (on POSIX make passes 'R,W' fds or 'fifo:PATH')"
    )
