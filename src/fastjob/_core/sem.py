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

Only an async waiter's :meth:`SemaphoreTransport.want` starts that thread;
``try_read`` (what Client.try_acquire and the token core call) only looks,
so a failed poll never leaves a thread that takes the next token.  A token is never "in transit" unseen: while the
thread waits in the kernel, a try that finds the semaphore empty cancels that wait and lets the
thread come out first, so a token the kernel already gave the thread is
claimed rather than missed.

Blocking waits (Client.acquire_blocking) call :meth:`SemaphoreTransport.wait_token`,
a ``WaitForMultipleObjects([cancel event, semaphore])`` in slices of at most
``WAIT_SLICE`` seconds so that Ctrl-C (KeyboardInterrupt) is seen between them;
:meth:`SemaphoreTransport.cancel_waits` wakes those waits.

:meth:`SemaphoreTransport.available` counts with ``NtQuerySemaphore`` (ntdll),
the one documented way to read a semaphore's count without taking it.

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
import time
from typing import Final, Protocol

from .. import _io
from .._errors import JobserverClosedError, JobserverError, UnsupportedPlatformError
from .._makeflags import JobserverAuth
from .._service_thread import start_service_thread
from .transport import Transport

__all__ = ["SemaphoreTransport", "create_semaphore_pool", "semaphore_api"]

TOKEN_BYTE: Final = ord("+")
#: Seconds a token taken by the waiter thread waits to be claimed before it
#: goes back to the semaphore (its waiter was cancelled meanwhile).
HANDBACK_GRACE: Final = 0.25
SEM_TIMEOUT: Final = 0
SEM_ACQUIRED: Final = 1
SEM_CANCELLED: Final = 2
#: Longest single kernel wait of wait_token: Ctrl-C is seen between two.
WAIT_SLICE: Final = 0.05
#: Longest wait for the waiter thread to come out of the kernel (it is
#: woken by its cancel event at once; this only bounds a wedged thread).
_SETTLE_TIMEOUT: Final = 2.0
_ERROR_TOO_MANY_POSTS: Final = 298
#: The maximum count of a semaphore fastjob creates (Windows' MAXLONG).  make
#: for Windows creates its semaphore with maximum == initial count; fastjob's
#: pool can grow (Server.resize), so its maximum is far above any pool: a
#: client's release never reaches it.  (A release of a token that was never
#: acquired is then not refused by the kernel; Server.reconcile() and the
#: count at close see it.)
SEM_MAX_COUNT: Final = 0x7FFFFFFF
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

    def count(self, sem: int) -> int:
        """The semaphore's current count, without taking any (NtQuerySemaphore)."""
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

    def count(self, sem: int) -> int:
        return self._m.sem_count(sem)

    def event_create(self) -> int:
        return self._m.event_create()

    def event_set(self, event: int) -> None:
        self._m.event_set(event)

    def close(self, handle: int) -> None:
        self._m.handle_close(handle)


if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    class _SemaphoreBasicInformation(ctypes.Structure):
        _fields_ = [("CurrentCount", wintypes.LONG), ("MaximumCount", wintypes.LONG)]

    class _CtypesAPI:
        """kernel32 through ctypes: the pure-Python install on Windows."""

        _SYNCHRONIZE = 0x00100000
        _SEMAPHORE_MODIFY_STATE = 0x0002
        _SEMAPHORE_QUERY_STATE = 0x0001
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
            nt = ctypes.WinDLL("ntdll")
            nt.NtQuerySemaphore.argtypes = [H, ctypes.c_int, ctypes.c_void_p, wintypes.ULONG,
                                            ctypes.POINTER(wintypes.ULONG)]
            nt.NtQuerySemaphore.restype = wintypes.LONG
            nt.RtlNtStatusToDosError.argtypes = [wintypes.LONG]
            nt.RtlNtStatusToDosError.restype = wintypes.ULONG
            self._nt = nt

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
            access = self._SYNCHRONIZE | self._SEMAPHORE_MODIFY_STATE | self._SEMAPHORE_QUERY_STATE
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

        def count(self, sem: int) -> int:
            info = _SemaphoreBasicInformation()
            status = int(self._nt.NtQuerySemaphore(sem, 0, ctypes.byref(info),
                                                   ctypes.sizeof(info), None))
            if status != 0:  # an NTSTATUS error
                raise ctypes.WinError(int(self._nt.RtlNtStatusToDosError(status)))
            return int(info.CurrentCount)

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
        self._in_wait = False  # the waiter thread is in (or entering) the kernel wait
        self._settling = 0  # callers holding the waiter thread out of the kernel
        self._cancel = 0  # wakes the waiter thread
        self._fg_cancel = 0  # wakes wait_token callers
        self._fg_gen = 0  # bumped by cancel_waits()
        self._fg_waiters = 0
        self._take_cancel = 0  # wakes take_returned (the owner's resize thread)
        self._take_waiters = 0
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self.read_fd = self._rsock.fileno()
        try:
            self._cancel = self._api.event_create()
            self._fg_cancel = self._api.event_create()
        except BaseException:
            self._close_handles()
            raise

    # -- token I/O -------------------------------------------------------------
    def try_read(self) -> int:
        """A token if one is free now (parked by the waiter thread, or in the
        semaphore), else AGAIN.  Starts no wait: an async waiter calls
        :meth:`want` before it waits on ``read_fd``, so a try_acquire that
        found nothing leaves no thread behind to take the next token."""
        with self._lock:
            if self._closed:
                raise self.closed_error()
            if self._claim_locked():
                return TOKEN_BYTE
            if self._in_wait:
                # The kernel may have handed the waiter thread a token it has
                # not parked yet: bring the thread out and look again.
                try:
                    self._settle_locked()
                    if self._claim_locked():
                        return TOKEN_BYTE
                finally:
                    self._unsettle_locked()
        return _io.AGAIN

    def _claim_locked(self) -> bool:
        """A parked token, else one free in the semaphore (never blocks)."""
        if self._pending:
            self._pending -= 1
            self._unannounce()
            self._cond.notify_all()
            return True
        return self._api.try_acquire(self._sem)

    def _settle_locked(self) -> None:
        """Hold the waiter thread out of the kernel wait (cancel it and wait
        until it has come out, parking a token it got); undo with
        _unsettle_locked."""
        self._settling += 1
        if self._in_wait:
            try:
                self._api.event_set(self._cancel)
            except OSError:
                return
            self._cond.wait_for(lambda: not self._in_wait, _SETTLE_TIMEOUT)

    def _unsettle_locked(self) -> None:
        self._settling -= 1
        if not self._settling:
            self._cond.notify_all()

    def read_blocking(self) -> int:
        return TOKEN_BYTE if self.wait_token(None) else _io.AGAIN

    def wait_token(self, timeout: float | None) -> bool:
        """Wait in this thread for a token: True when one was taken (this
        caller now holds it), False after ``timeout`` seconds (None: no limit)
        or when :meth:`cancel_waits` was called meanwhile (callers look at
        their own state and call again).  The kernel wait is
        ``WaitForMultipleObjects([cancel event, semaphore])`` with the GIL
        released, in slices of at most WAIT_SLICE seconds, so Ctrl-C raises
        KeyboardInterrupt here within one slice.  A token the waiter thread
        parked meanwhile is claimed too.  JobserverClosedError once the
        transport is closed."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._lock:
            if self._closed:
                raise self.closed_error()
            gen = self._fg_gen
            self._fg_waiters += 1
        try:
            while True:
                with self._lock:
                    if self._closed:
                        raise self.closed_error()
                    if self._claim_locked():
                        return True
                    if self._fg_gen != gen:
                        return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                r = self._api.wait(
                    self._sem, self._fg_cancel, WAIT_SLICE if left is None else min(left, WAIT_SLICE)
                )
                if r == SEM_ACQUIRED:
                    return True
                # SEM_TIMEOUT (one slice) or SEM_CANCELLED: look again above.
        finally:
            with self._lock:
                self._fg_waiters -= 1
                self._cond.notify_all()

    def cancel_waits(self) -> None:
        """Make every :meth:`wait_token` under way return False soon: the one
        in the kernel at once, any other within one WAIT_SLICE."""
        with self._lock:
            self._fg_gen += 1
            ev = self._fg_cancel
        if ev:
            try:
                self._api.event_set(ev)
            except OSError:
                pass  # closed meanwhile: the waits end with JobserverClosedError

    def take_returned(self, timeout: float) -> bool:
        """For the pool owner's resize thread, which withholds tokens as they
        come back: take a free token (parked or in the semaphore), waiting in
        the kernel up to ``timeout`` seconds for one.  True when one was taken
        (the caller now holds it); False after ``timeout`` or when
        :meth:`wake_take` was called.  Its own cancel event: client waits
        are not disturbed."""
        with self._lock:
            if self._closed:
                raise self.closed_error()
            if self._claim_locked():
                return True
            if not self._take_cancel:
                self._take_cancel = self._api.event_create()
            ev = self._take_cancel
            self._take_waiters += 1
        try:
            return self._api.wait(self._sem, ev, max(0.0, timeout)) == SEM_ACQUIRED
        finally:
            with self._lock:
                self._take_waiters -= 1
                self._cond.notify_all()

    def wake_take(self) -> None:
        """Make a :meth:`take_returned` under way (or the next one) return at once."""
        with self._lock:
            if self._closed:
                return
            if not self._take_cancel:
                try:
                    self._take_cancel = self._api.event_create()
                except OSError:
                    return  # take_returned then ends by its timeout
            ev = self._take_cancel
        if ev:
            try:
                self._api.event_set(ev)
            except OSError:
                pass

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
        """Free tokens: the semaphore's count (NtQuerySemaphore) plus tokens
        the waiter thread took and nobody claimed yet."""
        with self._lock:
            if self._closed:
                raise self.closed_error()
            try:
                self._settle_locked()  # a token in the thread's hands counts as free
                return self._api.count(self._sem) + self._pending
            finally:
                self._unsettle_locked()

    # -- the waiter thread --------------------------------------------------------
    def want(self) -> None:
        """An async waiter found no token and waits on ``read_fd``: have the
        waiter thread wait for one and announce it there."""
        with self._lock:
            if self._closed:
                return
            self._demand = True
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"fastjob-sem-{self.name}", daemon=True
                )
                start_service_thread(self._thread)

    def _run(self) -> None:
        while True:
            with self._lock:
                while (not self._demand or self._settling) and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                self._in_wait = True
            try:
                r = self._api.wait(self._sem, self._cancel, None)
            except OSError:
                with self._lock:
                    self._in_wait = False
                    self._cond.notify_all()
                return  # the handles were closed under us: close() is running
            with self._lock:
                self._in_wait = False
                self._cond.notify_all()
                if r != SEM_ACQUIRED:
                    continue  # cancelled: close(), a settle or a new demand; look again
                if self._closed:
                    self._give_back(1)
                    return
                self._demand = False
                self._pending += 1
                self._announce()
                if self._fg_waiters:
                    try:
                        self._api.event_set(self._fg_cancel)  # a blocking waiter may claim it
                    except OSError:
                        pass
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
        for ev in (self._cancel, self._fg_cancel, self._take_cancel):
            if ev:
                try:
                    self._api.event_set(ev)
                except OSError:
                    pass
        th = self._thread
        if th is not None and th is not threading.current_thread():
            th.join(timeout=5.0)
        with self._lock:
            # wait_token callers leave within one slice; their handles must
            # stay open until then.
            self._cond.wait_for(lambda: not self._fg_waiters and not self._take_waiters, 5.0)
        self._give_back(pending)
        self._close_handles()

    def _close_handles(self) -> None:
        self._rsock.close()
        self._wsock.close()
        for h in (self._cancel, self._fg_cancel, self._take_cancel, self._sem):
            if h:
                try:
                    self._api.close(h)
                except OSError:
                    pass
        self._cancel = self._fg_cancel = self._take_cancel = self._sem = 0


def create_semaphore_pool(
    jobs: int, api: SemaphoreAPI | None = None
) -> tuple[SemaphoreTransport, str]:
    """A new semaphore holding ``jobs - 1`` tokens and its name.  Its maximum
    count is SEM_MAX_COUNT, not ``jobs - 1`` as make's: the pool can grow."""
    api = semaphore_api() if api is None else api
    tokens = jobs - 1
    for _ in range(1000):
        name = f"fastjob_semaphore_{os.getpid()}_{next(_names)}"
        try:
            handle = api.create(name, tokens, SEM_MAX_COUNT)
        except FileExistsError:
            continue
        return SemaphoreTransport(name, handle=handle, api=api), name
    raise JobserverError("could not find a free name for a new jobserver semaphore")
