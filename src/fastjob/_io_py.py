"""Pure-Python token I/O and token core: the same names and results as the
native ``_fastjob`` extension (os.read, os.preadv, select.poll, fcntl).

Python code can be interrupted by a signal handler between any two
bytecodes, so the critical sections of the core (a read and the recording of
its token; taking a token's record and writing its byte) run with signals
blocked in the main thread (the only thread whose Python handlers run):
:func:`block_signals` / :func:`restore_signals`.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import struct
import sys
import time
import weakref as _weakref_mod
import _queue
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
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
    data = _BYTES[byte]
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
    data = _BYTES[byte]
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

from ._service_thread import start_service_thread  # noqa: E402

_main_ident = _threading.main_thread().ident
_get_ident = _threading.get_ident


def _libc_sigmask() -> Any:
    """pthread_sigmask from libc through ctypes: signal.pthread_sigmask
    builds Python sets of signal numbers (microseconds per call, hundreds
    with every signal blocked); this costs about one C call."""
    try:
        import ctypes

        try:
            # The symbols already loaded into this process (libc's among them):
            # no ctypes.util.find_library, which may run ldconfig or a compiler.
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.pthread_sigmask
        except (OSError, AttributeError):
            import ctypes.util  # only here: it imports subprocess (start-up time)

            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fn = libc.pthread_sigmask
        fill = libc.sigfillset
    except (ImportError, OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    full = ctypes.create_string_buffer(256)  # >= sizeof(sigset_t) everywhere
    if fill(full) != 0:
        return None
    return fn, full, ctypes.create_string_buffer


#: looked up on the first block_signals() (ctypes is not worth loading for a
#: process that never waits: start-up time of the CLI)
_UNSET: Any = object()
_native_mask: Any = _UNSET
#: how deep the main thread is in block_signals() sections
_sig_depth = 0
#: True from just before the outermost section's mask call until its depth
#: is counted: a raise at the call's return leaves the mask set at depth 0
_blocking = False
#: the mask the outermost section found: a ctypes buffer (filled by the very
#: call that blocks), or [set] on the path without ctypes
_outer: Any = None
#: the frame of the outermost section (see signal_level)
_owner: Any = None
_getframe = sys._getframe


def _load_mask() -> Any:
    """Load the libc mask call, every signal blocked meanwhile by the
    stdlib's own call: importing ctypes runs Python code for milliseconds,
    and a handler that raised in it (a storm from the start) failed the
    import each time, so no critical section could ever be entered."""
    global _native_mask, _outer
    if not hasattr(_signal, "pthread_sigmask"):
        _native_mask = None
        return None
    cur = _signal.pthread_sigmask(_signal.SIG_BLOCK, ())  # reads only: a raise after it changes nothing
    try:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, _signal.valid_signals())
        m = _libc_sigmask()
        # (filled by each outermost section's own blocking call)
        _outer = [cur] if m is None else m[2](256)
        _native_mask = m
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, cur)
    return _native_mask


def signal_level() -> int:
    """How deep this thread is in block_signals() sections (0 outside any;
    always 0 off the main thread): see _fastjob.signal_level.

    Pure: a handler that raises at restore_signals' first instruction
    (before any of it runs: CPython checks there, and runs a handler whose
    signal went to another thread) skips a section's end.  So a depth above
    0 is believed only while the outermost section's frame still runs;
    else the depth was left behind, and is mended here."""
    if _get_ident() != _main_ident:
        return 0
    d = _sig_depth
    if d:
        f: Any = _getframe(1)
        owner = _owner
        while f is not None and f is not owner:
            f = f.f_back
        if f is None:  # its section is over: its end was skipped
            _mend()
            return 0
    return d


def _mend() -> None:
    global _sig_depth, _owner, _blocking
    _sig_depth = 0
    _owner = None
    _blocking = False
    m = _native_mask
    if m is None:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, _outer[0])
    elif m is not _UNSET:
        m[0](_signal.SIG_SETMASK, _outer, None)


def block_signals() -> None:
    """Block every signal in this thread if it is the main thread (the only
    one whose Python handlers run), one level deeper.  A handler that
    raises here raises before the section, whose ``finally`` undoes this."""
    global _sig_depth, _blocking, _owner
    if _get_ident() != _main_ident:
        return
    if _sig_depth == 0:
        m = _native_mask
        if m is _UNSET:
            m = _load_mask()
        if m is None:
            if not hasattr(_signal, "pthread_sigmask"):
                return  # Windows: no signal masks
            cur = _signal.pthread_sigmask(_signal.SIG_BLOCK, ())  # reads only
            _outer[0] = cur
            _blocking = True
            _signal.pthread_sigmask(_signal.SIG_SETMASK, _signal.valid_signals())
        else:
            _blocking = True
            m[0](_signal.SIG_BLOCK, m[1], _outer)  # blocks, and keeps the old mask
        _owner = _getframe(1)
    _sig_depth += 1
    _blocking = False


def restore_signals(level: int) -> None:
    """Back to ``level`` (what signal_level() said before the section): at
    0 the mask the outermost section found is set again, and a signal that
    came meanwhile is handled now.  (Pure: a handler that raises at this
    function's first instruction, before any of it runs, leaves the mask
    set; the next outermost section's end puts it back.)"""
    global _sig_depth, _blocking, _owner
    if _get_ident() != _main_ident:
        return
    if _sig_depth > level or (level == 0 and _blocking):
        _sig_depth = level
        if level == 0:
            _blocking = False
            _owner = None
            m = _native_mask
            if m is None:
                _signal.pthread_sigmask(_signal.SIG_SETMASK, _outer[0])
            else:
                m[0](_signal.SIG_SETMASK, _outer, None)


def _after_fork() -> None:
    global _main_ident, _sig_depth, _blocking, _owner, _dead, _dead_got, _dead_lock, _reaper
    _main_ident = _threading.main_thread().ident
    _sig_depth = 0  # (the forking thread's mask is the child's: not ours to restore)
    _blocking = False
    _owner = None
    # the parent's reaper thread is not the child's: a Core starts a new one
    _dead = _queue.SimpleQueue()
    _dead_got = []
    _dead_lock = _threading.RLock()
    _reaper = None


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

    # _hold is [core] while held, [] once released: ``del hold[0]`` is
    # atomic, so exactly one releasing thread takes the record.  A token is
    # made as a _HeldToken (the leak check's __del__); its release makes it
    # a plain Token again, so a released token's dealloc runs no Python code
    # (cheaper, and no signal handler can raise in a finalizer there).
    __slots__ = ("_hold", "_byte", "_gen", "_watch", "__weakref__")

    _hold: list[Core]
    _byte: int
    _gen: int
    _watch: _Watch | None

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
        # CPython runs a signal handler only after a call returns, at a
        # function's start or on a backward jump: between taking the record
        # (``del hold[0]``) and the write (or the implicit flag) below there
        # is none of those, so a handler that raises cannot lose the token.
        hold = self._hold
        if not hold:
            return
        core = hold[0]
        b = self._byte
        if self._gen != core.gen or core.closed:
            try:
                del hold[0]
            except IndexError:
                pass
            self.__class__ = Token
            core._unwatch(self)
            return  # before a fork, or written back by close() already
        mode = core.write_mode
        if b < 0:
            try:
                del hold[0]
            except IndexError:
                return
            self.__class__ = Token
            if core.owns_implicit and not core._impl:
                core._impl.append(1)  # free first: a raise below must not lose it
                if core.nwait or core.solo is not None:
                    try:
                        core.handoff()  # the client passes it to the oldest waiter
                    except BaseException:
                        # a handler raised at its start, before any of it
                        # ran: once more (see _fastjob._handoff_whole)
                        core.handoff()
                        raise
            core._unwatch(self)
            if core._inbox:
                core._flush_inbox()  # (the reaper thread reaps)
            return
        if mode == WRITE_NOWAIT and _RWF_NOWAIT_W is None and not _writable(core.wfd):
            raise core.full_error()
        if mode > WRITE_NOWAIT:
            level = signal_level()
            try:
                block_signals()
                core._give_slow(self, hold)  # takes the record itself, at the write
            finally:
                restore_signals(level)
            return
        data = _BYTES[b]
        try:
            del hold[0]
        except IndexError:
            return  # another thread released it just now
        core._counts[b] -= 1
        try:
            if mode == WRITE_FD or _RWF_NOWAIT_W is None:
                _os_write(core.wfd, data)
            else:
                _os_pwritev(core.wfd, _IOVS[b], -1, _RWF_NOWAIT_W)
            self.__class__ = Token  # released: no finalizer any more
            core._watches.discard(self._watch)  # (inline: see Core._unwatch)
            self._watch = None
        except BlockingIOError:
            # still held (inline: a call to a Python function here is a
            # point where a handler may raise): a later release() may succeed
            core._counts[b] += 1
            hold.append(core)
            raise core.full_error() from None
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS) and mode == WRITE_NOWAIT:
                _no_rwf_nowait()
                core._unrelease(self)
                self.release()
                return
            if core.closed:
                return  # close() closed our own writer meanwhile: that pool is gone
            core.on_write_error(exc)  # the pool is broken or gone: the byte cannot go back
            raise
        if core._inbox:
            core._flush_inbox()

    def __enter__(self) -> Token:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.release()

    def __repr__(self) -> str:
        kind = "implicit" if self._byte < 0 else f"byte={bytes((self._byte,))!r}"
        state = "released" if not self._hold else "held"
        return f"<fastjob.Token {kind} {state}>"


class _HeldToken(Token):
    """A Token as it is made: with the leak check.  (A handler that raises
    at the very start of __del__, before any of its code runs, stops it:
    the Token's second watch, a _Watch, has the reaper give its slot back.)"""

    __slots__ = ()

    def __del__(self) -> None:
        try:
            if not self._hold:
                return
        except AttributeError:
            return  # dropped as it was made (a handler raised before its hold was set)
        # Release first (a warning turned into an error must not lose it),
        # with signals blocked: a handler must not raise before the give.
        level = signal_level()
        try:
            block_signals()
            try:
                core = self._hold[0]
            except IndexError:
                # the reaper gave it back just now (the collector calls a
                # cycle's weak references back before its finalizers)
                return
            try:
                self.release()
            except BaseException:  # noqa: BLE001 - the pool is gone: nothing to write to
                if self._hold:
                    del self._hold[0]
                    core._lost(self)
        finally:
            restore_signals(level)
        kind = "implicit" if self._byte < 0 else f"byte={bytes((self._byte,))!r}"
        _warnings.warn(
            f"fastjob: <fastjob.Token {kind}> was garbage collected without release(); "
            "it has been returned to the pool",
            _TokenLeakWarning,
            stacklevel=2,
        )


class _Watch(_weakref_mod.ref):  # type: ignore[type-arg]
    """The second watch on a held pure Token: a weak reference kept by its
    Core (reachable, so the collector calls it back for a Token in a cycle
    too), whose callback is a C call (the reaper's ``SimpleQueue.put``: no
    Python code, so no signal handler, runs in it, and it wakes the reaper
    thread).  ``hold`` is the Token's record (``_NOT_HELD`` until it holds
    one, empty once released), so the reaper finds a Token that died still
    holding its slot.  Released, a Token drops its watch, which then reports
    nothing."""

    __slots__ = ("hold", "byte", "gen")

    hold: list[Any]
    byte: int
    gen: int


_new_token = object.__new__


# -- the reaper: the slot of a Token whose finalizer never ran -----------------
# A Token dies holding its slot when a handler raised at its finalizer's
# first instruction.  Its watch's callback puts it in _dead; the reaper
# thread gives the slot back at once (a waiter asleep on the pool must not
# wait for a later call into this client), and flush() does so in the
# caller's thread for what is still pending (statistics() sees it back).
_dead: Any = _queue.SimpleQueue()
_dead_got: list[Any] = []  # taken from _dead, not yet given back
_dead_lock = _threading.RLock()  # (re-entrant: a give-back's hand-off may flush)
_reaper: Any = None
_ONE_BLOCKING_GET = (True,)
_getrefcount = sys.getrefcount
_time_sleep = time.sleep


def _reaper_callback() -> Any:
    """The callback for a new _Watch (a C call), with the reaper running."""
    global _reaper
    if _reaper is None:
        t = _threading.Thread(
            target=_reap_forever, args=(_dead, _dead_got), name="fastjob-reaper", daemon=True
        )
        start_service_thread(t)
        _reaper = t
    return _dead.put


def _reap_forever(dead: Any, got: list[Any]) -> None:
    while True:
        # taken and kept inside one C call: flush() in another thread finds
        # it either in the queue or in got, never in between
        got.extend(map(dead.get, _ONE_BLOCKING_GET))
        delay = 0.0001
        while got:
            try:
                with _dead_lock:
                    _give_back_dead(got)
            except BaseException:  # noqa: BLE001 - the reaper must outlive any one slot
                pass
            if got:
                # a Token of a garbage cycle: the collector calls it back
                # before its finalizer runs, which is to give it back
                _time_sleep(delay)
                delay = min(delay * 2, 0.05)


def _give_back_dead(got: list[Any]) -> None:
    """Give back the slot of each watch in got whose Token is gone (caller
    holds _dead_lock; in the main thread, with signals blocked); keep the
    others."""
    i = len(got)
    while i:
        i -= 1
        try:
            done = _give_back(got[i])
        except BaseException:
            del got[i]
            raise
        if done:
            del got[i]  # (kept in got until done: reap_now waits for it)


def _give_back(w: _Watch) -> bool:
    """w's Token died holding its slot: give it back.  False while the
    Token still exists: its finalizer has yet to run (the collector calls
    a cycle's weak references back first) or to finish."""
    hold = w.hold
    if not hold:
        return True  # released (by its finalizer), or never held
    if _getrefcount(hold) > 3:  # (w.hold, hold, the argument: no Token)
        return False
    try:
        core = hold[0]
        del hold[0]  # the record: taken once, here or by a release
    except IndexError:
        return True
    fresh = w.gen == core.gen and not core.closed
    # a stand-in Token with the record: release() knows every way to write
    # a byte back
    tok: Token = _new_token(Token)
    tok._hold = [core]
    tok._byte = w.byte
    tok._gen = w.gen
    tok._watch = None
    try:
        tok.release()
    except Exception:  # noqa: BLE001 - still held (a full pool): close() writes it
        pass
    try:
        core._watches.discard(w)
    except TypeError:
        pass  # its hash never taken (never added): dead, it has none
    if fresh and not tok._hold:
        try:
            _warnings.warn(
                "fastjob: a Token was garbage collected without release(), and a "
                "signal handler raised in its finalizer; it has been returned to the pool",
                _TokenLeakWarning,
                stacklevel=3,
            )
        except Exception:  # noqa: BLE001 - warnings as errors: not this caller's error
            pass
    return True


def reap_now() -> None:
    """Give back, in this thread, the slots the reaper has not yet."""
    if not _dead_got and _dead.empty():
        return
    level = signal_level()
    try:
        block_signals()
        with _dead_lock:
            try:
                while True:
                    _dead_got.extend(map(_dead.get, (False,)))
            except _queue.Empty:
                pass
            _give_back_dead(_dead_got)
    finally:
        restore_signals(level)


_weakref = _weakref_mod.ref
_NOT_HELD: list[Any] = []  # the hold of a Token not (yet) held: never appended to
_os_read = os.read
_os_write = os.write
_os_pwritev: Any = getattr(os, "pwritev", None)
_os_preadv: Any = getattr(os, "preadv", None)
_BYTES = [bytes((i,)) for i in range(256)]
_IOVS = [[b] for b in _BYTES]  # pwritev's buffers, built once (never changed)


def _no_rwf_nowait() -> None:
    global _RWF_NOWAIT_W
    _RWF_NOWAIT_W = None


def _writable(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLOUT)
    ready = p.poll(0)
    return bool(ready) and not ready[0][1] & select.POLLNVAL


class Core:
    """The token state of one Client on one pool (the twin of _fastjob.Core).

    Reads in the main thread land in ``_inbox`` inside one C call (``extend``
    over a ``map`` of the read), so a signal handler raising right after the
    read finds the byte there, not lost: the next take hands it out and a
    release or close() gives it back."""

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
        self._impl: list[int] = [1] if owns_implicit else []
        # Each held Token's second watch (see _Watch): kept here, and
        # reported to the reaper when its Token dies, which gives back the
        # slot of one that died still holding it.
        self._watches: set[_Watch] = set()
        self._died = _reaper_callback()
        self.gen = gen
        self.slow = slow
        self.handoff = handoff
        self.on_write_error = on_write_error
        self.full_error = full_error
        self.closed = False
        self.acquired = 0
        self.nwait = 0
        self.solo: Any = None  # the lone waiter (see solo_wait)
        # re-entrant: a finalizer the collector runs inside a take may hand off
        self._solo_lock = _threading.RLock()
        self._counts = [0] * 256
        # a deque: it keeps its block when emptied (a list frees its items
        # on every ``del inbox[0]`` and allocates them again at the next read)
        self._inbox: collections.deque[Any] = collections.deque()
        self._nbuf = bytearray(1)
        if read_mode == READ_FD:
            self._read_args: tuple[Any, ...] = (_os_read, (rfd,), (1,))
        elif read_mode == READ_NOWAIT:
            if _RWF_NOWAIT is None or _os_preadv is None:
                raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
            self._read_args = (_os_preadv, (rfd,), ([self._nbuf],), (-1,), (_RWF_NOWAIT,))
        else:
            self._read_args = ()

    @property
    def held(self) -> int:
        """Pool tokens held (summed when asked: the hot path keeps one count)."""
        return sum(self._counts)

    @property
    def implicit_free(self) -> bool:
        return bool(self._impl)

    @implicit_free.setter
    def implicit_free(self, free: bool) -> None:
        if free and not self._impl:
            self._impl.append(1)
        elif not free:
            self._impl.clear()

    def take(self) -> Token | None:
        """A Token for a pool byte read now, or None; JobserverClosedError
        at EOF.  Ignores the queue (the caller is the queue's pump)."""
        return self.try_acquire(_pump=True)

    def try_acquire(self, *, _pump: bool = False) -> Token | None:
        """Client.try_acquire (see _fastjob.Core.try_acquire); with _pump,
        take().  (One function: a Python call is a third of the cost of
        the read it makes.  Keyword-only: ``client.try_acquire(True)`` is a
        TypeError, as on the native core, not a way past the queue.)"""
        if not _pump:
            if self.closed or self.nwait or self.solo is not None:
                return self.slow()  # type: ignore[no-any-return]
            if self._impl:
                implicit = self.take_implicit()
                if implicit is not None:
                    return implicit
            if self.read_mode == READ_NONE:
                return self.slow()  # type: ignore[no-any-return]
        if not self._read_args:
            r = AGAIN if self.read_mode == READ_NONE else int(self.transport.try_read())
            if r == AGAIN:
                return None
            return self.adopt(r)
        inbox = self._inbox
        if _get_ident() != _main_ident:
            # no Python signal handler runs in this thread: a plain read
            try:
                r = try_read(self.rfd) if self.read_mode == READ_FD else read_nowait(self.rfd)
            except OSError:
                if self.closed:
                    return self.slow()  # type: ignore[no-any-return]  # close() closed the fd meanwhile
                raise
            if r == AGAIN:
                return None
            if r == EOF:
                raise self.transport.closed_error()
            return self.adopt(r)
        # Allocated first: an allocation may run the garbage collector, and
        # a dropped Token's __del__ there may give back the inbox's byte
        # (_flush_inbox); after the look at the inbox nothing allocates.
        tok: Token = _new_token(_HeldToken)
        hold = [self]
        tok._hold = _NOT_HELD
        watch = _Watch(tok, self._died)
        watch.hold = _NOT_HELD
        tok._watch = watch
        if not inbox:
            try:
                inbox.extend(map(*self._read_args))
            except OSError as exc:
                tok.__class__ = Token  # never held: no finalizer to run
                tok._watch = None  # (freed before tok: it reports nothing)
                if exc.__class__ is BlockingIOError:
                    return None
                if self.closed:
                    return self.slow()  # type: ignore[no-any-return]  # close() in another thread closed the fd
                raise
        data = inbox[0]
        if type(data) is int:
            b = self._nbuf[0] if data else EOF
        else:
            b = data[0] if data else EOF
        if b == EOF:
            del inbox[0]
            raise self.transport.closed_error()
        if self.closed:  # close() ran while we read (no call from here to the record)
            del inbox[0]
            tok.__class__ = Token
            tok._watch = None
            return self._read_after_close(b)
        tok._byte = b
        tok._gen = watch.gen = self.gen
        watch.byte = b
        tok._hold = hold
        watch.hold = hold  # (no call since the last: the record and its watch go together)
        self._counts[b] += 1
        self.acquired += 1
        del inbox[0]  # the byte is the token's now (no call in between)
        self._watches.add(watch)  # (a raise before it: refcount deaths still report)
        return tok

    def take_implicit(self) -> Token | None:
        """The implicit token if it is free, else None (ignores the queue)."""
        if self.closed:
            return None
        if not self._impl:
            return None
        # A plain Token until it holds the slot: dropped before (a handler
        # raising at one of the calls below), it runs no finalizer.
        tok: Token = _new_token(Token)
        tok._hold = _NOT_HELD  # not held (yet): dropped, it gives nothing back
        tok._byte = -1
        tok._gen = self.gen
        hold = [self]
        watch = _Watch(tok, self._died)
        watch.hold = _NOT_HELD
        watch.byte = -1
        watch.gen = self.gen
        tok._watch = watch
        try:
            del self._impl[0]  # atomic: the implicit token goes out once
        except IndexError:
            tok._watch = None  # (freed before tok: it reports nothing)
            return None
        tok._hold = hold  # (no call since the del)
        watch.hold = hold
        tok.__class__ = _HeldToken  # (a store: no Python code runs)
        self.acquired += 1
        self._watches.add(watch)  # (a raise before it: refcount deaths still report)
        return tok

    def _unwatch(self, tok: Token) -> None:
        """tok gave its slot back: its watch goes (and reports nothing)."""
        # (no local for the watch: a frame's locals go in order, and a
        # Token dying first would find its watch alive, and be reported)
        self._watches.discard(tok._watch)
        tok._watch = None

    def solo_wait(self, w: Any, excl: Any, wake_fd: int, timeout: float | None) -> Token | int:
        """The lone waiter's wait (see _fastjob.Core.solo_wait): the read and
        the clearing of ``solo`` happen with signals blocked, under the lock
        that solo_claim takes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.solo is not w:
                return 3
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            r = wait_readable(self.rfd, wake_fd, left) if excl is None else excl.wait(left)
            if r != 1:
                return int(r)
            level = signal_level()
            try:
                block_signals()
                with self._solo_lock:
                    if self.solo is not w:
                        return 1
                    tok = self.take()
                    if tok is not None:
                        self.solo = None
                        return tok
            finally:
                restore_signals(level)
            # another process read it first: wait again

    def solo_claim(self) -> Any:
        """Take the lone waiter (to queue it), or None."""
        with self._solo_lock:
            w, self.solo = self.solo, None
        return w

    def solo_leave(self, w: Any) -> bool:
        """w stops waiting alone: True if it was still the lone waiter."""
        with self._solo_lock:
            if self.solo is w:
                self.solo = None
                return True
        return False

    def adopt(self, byte: int) -> Token:
        """A held Token for a byte read by someone else (the reader thread)."""
        tok: Token = _new_token(_HeldToken)
        tok._hold = _NOT_HELD
        hold = [self]
        watch = _Watch(tok, self._died)
        if self.closed:  # close() ran while it was read (no call from here to the record)
            tok.__class__ = Token
            tok._watch = None
            watch.hold = _NOT_HELD  # (it may outlive tok: it reports nothing)
            return self._read_after_close(byte)
        watch.byte = tok._byte = byte
        watch.gen = tok._gen = self.gen
        tok._watch = watch
        tok._hold = watch.hold = hold
        if byte >= 0:
            self._counts[byte] += 1
        self.acquired += 1
        self._watches.add(watch)
        return tok

    def _read_after_close(self, byte: int) -> Token:
        """A byte read while close() ran: close() gave back what it found
        held and this was not, so it goes back here; then the client's
        closed error (slow() raises it)."""
        if byte >= 0:
            try:
                self.transport.write(byte)
            except Exception:  # noqa: BLE001 - the pool is gone: nowhere to go
                pass
        return self.slow()  # type: ignore[no-any-return]

    def _unrelease(self, tok: Token) -> None:
        tok._hold.append(self)
        self._counts[tok._byte] += 1

    def _give_slow(self, tok: Token, hold: list[Any]) -> None:
        """Write tok's byte through the transport (FIFO, semaphore) and take
        its record (``hold``), with signals blocked.

        Blocked signals are not enough: a signal sent to the process while
        this thread blocks it goes to another thread, and CPython runs its
        Python handler here at the next call's return.  So whether the byte
        was written is never read from the exception flow: the write runs
        inside one C call (``list.extend`` over a ``map``) that records its
        result before control comes back, and a raise after it finds the
        record.  (Judged by the exception, a handler raising right after the
        write made the token held again: its byte then went back twice.)"""
        b = tok._byte
        t = self.transport
        if self.write_mode != WRITE_LOCKED:
            self._give_py(tok, hold)
            return
        done: list[int] = []
        with t._lock:
            if self.closed:
                # close() ran while we waited for the lock: it counted this
                # token held and wrote its byte back (no call from the look
                # to the record)
                try:
                    del hold[0]
                except IndexError:
                    pass
                tok.__class__ = Token
                return
            if t._wfd < 0:
                t._reopen_writer()  # raises FifoError with the token still held
            try:
                del hold[0]
            except IndexError:
                return  # another thread released it just now
            self._counts[b] -= 1
            try:
                done.extend(map(_os_write, (t._wfd,), (_BYTES[b],)))
            except BaseException as exc:
                if done:
                    raise  # written: a handler raised after the write
                # not written: held again first (a store and a C call), then
                # sorted out
                self._counts[b] += 1
                hold.append(self)
                if exc.__class__ is BlockingIOError:
                    raise self.full_error() from None
                if isinstance(exc, OSError):
                    if exc.errno in _POOL_GONE:
                        del hold[0]  # the pool is gone: the byte has nowhere to go
                        self._counts[b] -= 1
                        tok.__class__ = Token
                    self.on_write_error(exc)
                raise
        tok.__class__ = Token
        self._unwatch(tok)

    def _give_py(self, tok: Token, hold: list[Any]) -> None:
        """_give_slow for a transport without a descriptor of ours (the
        Windows semaphore, the pipe's shared end): its write is Python
        code, so a handler that raises in it is judged by its type."""
        closed = self.closed  # close() wrote it back (no call from here to the record)
        try:
            del hold[0]
        except IndexError:
            return
        if closed:
            tok.__class__ = Token
            return
        t = self.transport
        try:
            t.write(tok._byte)
        except OSError as exc:
            if exc.errno in _POOL_GONE:
                self._lost(tok)  # the pool is gone: the byte has nowhere to go
            else:
                hold.append(self)  # not written (out of fds...): still held
            self.on_write_error(exc)
            raise
        except Exception as exc:
            # The transport's own error (JobserverError): the token stays
            # held (release() again, or close(), writes it).
            if getattr(exc, "pool_gone", False):
                self._lost(tok)
            else:
                hold.append(self)
            raise
        self._lost(tok)
        tok.__class__ = Token
        self._unwatch(tok)

    def flush(self) -> None:
        """Give back a byte a signal handler left between a read and its
        token (the native core never leaves one), and the slot of a Token
        that died holding it (reap_now)."""
        if self._inbox:
            self._flush_inbox()
        reap_now()

    def _flush_inbox(self) -> None:
        """Give back a byte a signal handler left in the inbox."""
        inbox = self._inbox
        if not inbox or _get_ident() != _main_ident:
            return
        mode = self.write_mode
        if mode == WRITE_LOCKED:  # (the FIFO: its writer is the transport's, not wfd)
            level = signal_level()
            try:
                block_signals()
                t = self.transport
                with t._lock:
                    # (looked at only now: a finalizer run by the collector
                    # in block_signals may have given it back already)
                    if t._wfd >= 0 and inbox:
                        b = self._inbox_byte(inbox[0])
                        if b < 0:
                            del inbox[0]
                            return
                        # (written inside one C call that records it, as in
                        # _give_slow: a handler may raise right after it)
                        done: list[int] = []
                        del inbox[0]
                        try:
                            done.extend(map(_os_write, (t._wfd,), (_BYTES[b],)))
                        except BlockingIOError:
                            if not done:
                                inbox.insert(0, _BYTES[b])  # full: kept for the next take()
                        except BaseException:
                            if not done:
                                inbox.insert(0, _BYTES[b])
                            raise
            finally:
                restore_signals(level)
            return
        if self.wfd < 0:
            return  # no writer of ours: the next take() hands it out
        b = self._inbox_byte(inbox[0])  # (allocates nothing: no collector run)
        if b < 0:
            del inbox[0]
            return
        if mode == WRITE_FD:
            del inbox[0]  # no call between this and the write
            _os_write(self.wfd, _BYTES[b])
        elif mode == WRITE_NOWAIT and _RWF_NOWAIT_W is not None:
            del inbox[0]
            _os_pwritev(self.wfd, _IOVS[b], -1, _RWF_NOWAIT_W)
        # else: the next take() hands it out

    def _inbox_byte(self, data: Any) -> int:
        """The byte of an inbox entry (a read's bytes, or preadv's count of
        the byte in _nbuf); EOF for an empty read."""
        if type(data) is int:
            return self._nbuf[0] if data else EOF
        return data[0] if data else EOF

    def _lost(self, tok: Token) -> None:
        """Forget a pool token's record (written back, or unwritable)."""
        b = tok._byte
        if b >= 0 and tok._gen == self.gen and self._counts[b] > 0:
            self._counts[b] -= 1

    def give(self, tok: Token) -> None:
        """Release tok (Token.release)."""
        tok.release()

    def held_bytes(self) -> list[int]:
        """The bytes of the pool tokens still held, forgetting them (close);
        also a byte a signal handler left in the inbox."""
        out = [b for b in range(256) for _ in range(self._counts[b])]
        for data in self._inbox:
            if type(data) is int:
                if data:
                    out.append(self._nbuf[0])
            elif data:
                out.append(data[0])
        self._inbox.clear()
        self._counts = [0] * 256
        self._watches.clear()  # (their Tokens' records are forgotten here too)
        return out

    def after_fork(self, gen: int) -> None:
        """In a forked child: it holds none of the parent's tokens."""
        self.held_bytes()
        self.gen = gen
        self.owns_implicit = False
        self._impl.clear()
        self._died = _reaper_callback()  # (the parent's Tokens report to the old queue)
        self.nwait = 0
        self.solo = None
        # re-entrant: a finalizer the collector runs inside a take may hand off
        self._solo_lock = _threading.RLock()


# -- a ready awaitable (the twin of _fastjob.ready) ----------------------------
class Ready:
    """An awaitable that is done already: ``await ready(x)`` gives x."""

    __slots__ = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __await__(self) -> Any:
        return self.value
        yield  # a generator: done at its first step  # noqa: B901


AM_SEND = 0


def ready(value: Any = None) -> Any:
    """A Ready awaitable for value."""
    return Ready(value)


# -- ``async with client.token()`` (the twin of _fastjob.TokenContext) --------
class TokenContext:
    """``async with client.token() as tok`` (coroutines: in pure Python they
    are cheaper than any ready-made awaitable)."""

    __slots__ = ("_client", "_try", "token")

    def __init__(self, client: Any, try_loop: Any) -> None:
        self._client = client
        self._try = try_loop
        self.token: Any = None

    async def __aenter__(self) -> Any:
        aio = sys.modules.get("asyncio")
        if aio is not None and aio._get_running_loop() is not None:
            tok = self._try()
            if tok is not None:
                self.token = tok
                return tok
            return await self._client._ctx_wait(self)
        return await self._client._ctx_acquire(self)

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        tok = self.token
        if tok is not None:
            self.token = None
            tok.release()


class TokenContexts:
    """Client.token: makes a TokenContext per call."""

    __slots__ = ("_client", "_try")

    def __init__(self, client: Any, try_loop: Any) -> None:
        self._client = client
        self._try = try_loop

    def __call__(self) -> TokenContext:
        return TokenContext(self._client, self._try)
