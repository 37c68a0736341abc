"""The Windows jobserver: a named semaphore (make's ``gmake_semaphore_<pid>``).

A semaphore carries no byte, so every token read from it is ``+`` (what make
writes) and a release gives one count back whatever the byte.

Wait strategy (DESIGN.md ladder step 4, "sem-waiter"): a try is a zero-timeout
wait.  When it fails, a waiter thread (started on first need, one per
transport) blocks in ``WaitForMultipleObjects([cancel, sem])`` with the GIL
released.  The token it takes is parked and announced by a byte on a socket
pair, whose read end is ``read_fd``: the client's usual "wait until read_fd is
readable, then try_read" loop claims it (anyio waits on sockets on every
Windows event loop).  A parked token nobody claims within ``HANDBACK_GRACE``
seconds (its waiter was cancelled) goes back to the semaphore.

The calls come from the native extension (``_fastjob.sem_*``) or, for the
pure-Python install, from kernel32 through ctypes.  This module imports on
every platform (so it is type-checked and tested with a stand-in semaphore);
opening a real semaphore off Windows raises UnsupportedPlatformError.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import sys
import threading
from typing import Final, Protocol

from .. import _io
from .._errors import JobserverClosedError, JobserverError, UnsupportedPlatformError
from .._makeflags import JobserverAuth
from .transport import Transport

__all__ = ["SemaphoreTransport", "create_semaphore_pool", "semaphore_api"]

TOKEN_BYTE: Final = ord("+")
#: Seconds a token taken by the waiter thread waits to be claimed before it
#: goes back to the semaphore (its waiter was cancelled meanwhile).
HANDBACK_GRACE: Final = 0.25
SEM_TIMEOUT: Final = 0
SEM_ACQUIRED: Final = 1
SEM_CANCELLED: Final = 2
_ERROR_TOO_MANY_POSTS: Final = 298
_names = itertools.count()


class SemaphoreAPI(Protocol):
    """The kernel calls the transport needs; handles are ints."""

    def create(self, name: str, count: int, max_count: int) -> int:
        """A new named semaphore; FileExistsError when the name is taken."""
        ...

    def open(self, name: str) -> int:
        """Open an existing semaphore; FileNotFoundError when there is none."""
        ...

    def try_acquire(self, sem: int) -> bool:
        """Take a count if one is free now; never blocks."""
        ...

    def wait(self, sem: int, cancel: int, timeout: float | None) -> int:
        """SEM_ACQUIRED, SEM_CANCELLED (cancel event set) or SEM_TIMEOUT."""
        ...

    def release(self, sem: int) -> None:
        """Give one count back (OSError above the maximum)."""
        ...

    def event_create(self) -> int:
        """An unsignalled auto-reset event."""
        ...

    def event_set(self, event: int) -> None: ...

    def close(self, handle: int) -> None: ...


class _NativeAPI:
    """The calls of the ``_fastjob`` extension (src/fastjob_io_win.h)."""

    def __init__(self) -> None:
        import _fastjob

        self._m = _fastjob

    def create(self, name: str, count: int, max_count: int) -> int:
        return self._m.sem_create(name, count, max_count)

    def open(self, name: str) -> int:
        return self._m.sem_open(name)

    def try_acquire(self, sem: int) -> bool:
        return self._m.sem_try(sem)

    def wait(self, sem: int, cancel: int, timeout: float | None) -> int:
        return self._m.sem_wait(sem, cancel, timeout)

    def release(self, sem: int) -> None:
        self._m.sem_release(sem)

    def event_create(self) -> int:
        return self._m.event_create()

    def event_set(self, event: int) -> None:
        self._m.event_set(event)

    def close(self, handle: int) -> None:
        self._m.handle_close(handle)


if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    class _CtypesAPI:
        """kernel32 through ctypes: the pure-Python install on Windows."""

        _SYNCHRONIZE = 0x00100000
        _SEMAPHORE_MODIFY_STATE = 0x0002
        _WAIT_OBJECT_0 = 0
        _WAIT_TIMEOUT = 0x102
        _INFINITE = 0xFFFFFFFF

        def __init__(self) -> None:
            k = ctypes.WinDLL("kernel32", use_last_error=True)
            H = wintypes.HANDLE
            k.CreateSemaphoreW.argtypes = [wintypes.LPVOID, wintypes.LONG, wintypes.LONG,
                                           wintypes.LPCWSTR]
            k.CreateSemaphoreW.restype = H
            k.OpenSemaphoreW.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.LPCWSTR]
            k.OpenSemaphoreW.restype = H
            k.WaitForSingleObject.argtypes = [H, wintypes.DWORD]
            k.WaitForSingleObject.restype = wintypes.DWORD
            k.WaitForMultipleObjects.argtypes = [wintypes.DWORD, ctypes.POINTER(H),
                                                 wintypes.BOOL, wintypes.DWORD]
            k.WaitForMultipleObjects.restype = wintypes.DWORD
            k.ReleaseSemaphore.argtypes = [H, wintypes.LONG, wintypes.LPVOID]
            k.ReleaseSemaphore.restype = wintypes.BOOL
            k.CreateEventW.argtypes = [wintypes.LPVOID, wintypes.BOOL, wintypes.BOOL,
                                       wintypes.LPCWSTR]
            k.CreateEventW.restype = H
            k.SetEvent.argtypes = [H]
            k.SetEvent.restype = wintypes.BOOL
            k.CloseHandle.argtypes = [H]
            k.CloseHandle.restype = wintypes.BOOL
            self._k = k

        @staticmethod
        def _fail() -> OSError:
            return ctypes.WinError(ctypes.get_last_error())

        def create(self, name: str, count: int, max_count: int) -> int:
            ctypes.set_last_error(0)
            h = self._k.CreateSemaphoreW(None, count, max_count, name)
            if not h:
                raise self._fail()
            if ctypes.get_last_error() == 183:  # ERROR_ALREADY_EXISTS
                self._k.CloseHandle(h)
                raise FileExistsError(errno.EEXIST, f"semaphore {name!r} already exists")
            return int(h)

        def open(self, name: str) -> int:
            access = self._SYNCHRONIZE | self._SEMAPHORE_MODIFY_STATE
            h = self._k.OpenSemaphoreW(access, False, name)
            if not h:
                raise self._fail()
            return int(h)

        def try_acquire(self, sem: int) -> bool:
            r = int(self._k.WaitForSingleObject(sem, 0))
            if r == self._WAIT_OBJECT_0:
                return True
            if r == self._WAIT_TIMEOUT:
                return False
            raise self._fail()

        def wait(self, sem: int, cancel: int, timeout: float | None) -> int:
            ms = self._INFINITE if timeout is None else max(0, int(timeout * 1000 + 0.999))
            handles = [cancel, sem] if cancel else [sem]
            arr = (wintypes.HANDLE * len(handles))(*handles)
            r = int(self._k.WaitForMultipleObjects(len(handles), arr, False, ms))
            if r == self._WAIT_TIMEOUT:
                return SEM_TIMEOUT
            if 0 <= r < len(handles):
                return SEM_CANCELLED if cancel and r == 0 else SEM_ACQUIRED
            raise self._fail()

        def release(self, sem: int) -> None:
            if not self._k.ReleaseSemaphore(sem, 1, None):
                raise self._fail()

        def event_create(self) -> int:
            h = self._k.CreateEventW(None, False, False, None)
            if not h:
                raise self._fail()
            return int(h)

        def event_set(self, event: int) -> None:
            if not self._k.SetEvent(event):
                raise self._fail()

        def close(self, handle: int) -> None:
            if not self._k.CloseHandle(handle):
                raise self._fail()


def semaphore_api() -> SemaphoreAPI:
    """The semaphore calls of this install (native, else ctypes on Windows)."""
    if sys.platform == "win32":
        if _io.NATIVE:
            return _NativeAPI()
        return _CtypesAPI()
    raise UnsupportedPlatformError(
        "semaphore jobservers exist only on Windows (on POSIX make passes "
        "'R,W' fds or 'fifo:PATH')"
    )


def _is_overflow(exc: OSError) -> bool:
    return exc.errno == errno.EOVERFLOW or getattr(exc, "winerror", None) == _ERROR_TOO_MANY_POSTS


class SemaphoreTransport(Transport):
    """A Windows named semaphore, opened by name (client) or created by
    :func:`create_semaphore_pool` (server)."""

    style = "sem"
    strategy = "sem-waiter"
    nonblocking_read = True

    def __init__(
        self, name: str, *, handle: int | None = None, api: SemaphoreAPI | None = None
    ) -> None:
        """Open semaphore ``name`` (or adopt ``handle``, which is then ours
        to close).  ``api`` replaces the kernel calls (tests)."""
        self.name = name
        self._api = semaphore_api() if api is None else api
        if handle is None:
            try:
                handle = self._api.open(name)
            except FileNotFoundError:
                raise JobserverClosedError(
                    f"the jobserver semaphore {name!r} does not exist: the make (or "
                    "fastjob) that created it has exited"
                ) from None
            except OSError as exc:
                raise JobserverError(
                    f"cannot open the jobserver semaphore {name!r}: {exc.strerror}"
                ) from None
        self._sem = handle
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending = 0  # tokens the waiter thread took, not yet claimed
        self._demand = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._cancel = 0
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self.read_fd = self._rsock.fileno()
        try:
            self._cancel = self._api.event_create()
        except BaseException:
            self._close_handles()
            raise

    # -- token I/O -------------------------------------------------------------
    def try_read(self) -> int:
        with self._lock:
            if self._closed:
                raise self.closed_error()
            if self._pending:
                self._pending -= 1
                self._unannounce()
                self._cond.notify_all()
                return TOKEN_BYTE
        if self._api.try_acquire(self._sem):
            return TOKEN_BYTE
        self._want()
        return _io.AGAIN

    def read_blocking(self) -> int:
        r = self._api.wait(self._sem, self._cancel, None)
        return TOKEN_BYTE if r == SEM_ACQUIRED else _io.AGAIN

    def write(self, byte: int) -> None:
        try:
            self._api.release(self._sem)
        except OSError as exc:
            if _is_overflow(exc):
                raise JobserverError(
                    f"the jobserver semaphore {self.name!r} is already full: a token was "
                    "released that was never acquired"
                ) from None
            raise

    def available(self) -> int | None:
        return None  # a semaphore's count cannot be read without taking it

    # -- the waiter thread --------------------------------------------------------
    def _want(self) -> None:
        """A waiter found no token: have the thread wait for one."""
        with self._lock:
            if self._closed:
                return
            self._demand = True
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"fastjob-sem-{self.name}", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._demand and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                r = self._api.wait(self._sem, self._cancel, None)
            except OSError:
                return  # the handles were closed under us: close() is running
            if r != SEM_ACQUIRED:
                continue  # cancelled: close() or a new demand; look again
            with self._lock:
                if self._closed:
                    self._give_back(1)
                    return
                self._demand = False
                self._pending += 1
                self._announce()
                # The hand-back rule: claimed soon, or back to the pool.
                self._cond.wait_for(lambda: not self._pending or self._closed, HANDBACK_GRACE)
                if self._pending and not self._closed:
                    n, self._pending = self._pending, 0
                    for _ in range(n):
                        self._unannounce()
                    self._give_back(n)

    def _announce(self) -> None:
        try:
            self._wsock.send(b"t")
        except OSError:
            pass

    def _unannounce(self) -> None:
        try:
            self._rsock.recv(1)
        except OSError:
            pass

    def _give_back(self, n: int) -> None:
        for _ in range(n):
            try:
                self._api.release(self._sem)
            except OSError:
                pass

    # -- naming ---------------------------------------------------------------
    def auth(self) -> JobserverAuth:
        return JobserverAuth("sem", name=self.name)

    def identity(self) -> object:
        return ("sem", self.name)

    def describe(self) -> str:
        return f"semaphore {self.name}"

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending, self._pending = self._pending, 0
            self._cond.notify_all()
        if self._cancel:
            try:
                self._api.event_set(self._cancel)
            except OSError:
                pass
        th = self._thread
        if th is not None and th is not threading.current_thread():
            th.join(timeout=5.0)
        self._give_back(pending)
        self._close_handles()

    def _close_handles(self) -> None:
        self._rsock.close()
        self._wsock.close()
        for h in (self._cancel, self._sem):
            if h:
                try:
                    self._api.close(h)
                except OSError:
                    pass
        self._cancel = self._sem = 0


def create_semaphore_pool(
    jobs: int, api: SemaphoreAPI | None = None
) -> tuple[SemaphoreTransport, str]:
    """A new semaphore holding ``jobs - 1`` tokens (at most that many, as make
    does; at least 1 as the maximum, which Windows requires) and its name."""
    api = semaphore_api() if api is None else api
    tokens = jobs - 1
    for _ in range(1000):
        name = f"fastjob_semaphore_{os.getpid()}_{next(_names)}"
        try:
            handle = api.create(name, tokens, max(tokens, 1))
        except FileExistsError:
            continue
        return SemaphoreTransport(name, handle=handle, api=api), name
    raise JobserverError("could not find a free name for a new jobserver semaphore")
