# cython: language_level=3, boundscheck=False, wraparound=False
"""Native token I/O and the token core of fastjob (src/fastjob_io.h).

Reads return the token byte (0..255), AGAIN (-2) when no token is there now,
EOF (-3) when the pool's writers are all gone; other failures raise OSError.
Calls that may block release the GIL; a non-blocking read or write keeps it
(a ``with nogil`` costs more than the syscall saves there).  The pure twin is
fastjob/_io_py.py: the same names, the same results.
"""

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport errno, EINTR, EPIPE, EBADF, ENXIO
from libc.stdlib cimport malloc, free

cdef extern from "fastjob_io.h" nogil:
    int FJ_AGAIN
    int FJ_EOF
    int FJ_INTR
    int fj_try_read(int fd)
    int fj_read_blocking(int fd)
    int fj_read_nowait(int fd)
    int fj_write(int fd, int byte)
    int fj_try_write(int fd, int byte)
    int fj_write_nowait(int fd, int byte)
    int fj_wait_readable(int fd, int cancel_fd, int timeout_ms)
    int fj_wait_pool(int ep, int pool_fd, int timeout_ms)
    int fj_available(int fd)
    int fj_fill(int fd, int byte, int n)
    int fj_drain(int fd, unsigned char *buf, int cap)
    int fj_reopen_private(int fd, int flags)
    ctypedef struct fj_fd_info_t:
        long long mode
        long long dev
        long long ino
        long long uid
        int fl_flags
        int fd_flags
    int fj_fd_info(int fd, fj_fd_info_t *info)

import os as _os
from time import monotonic as _monotonic

AGAIN = FJ_AGAIN

cdef enum:
    FJ_CLOSED = -5  # _write: close() gave the byte back meanwhile
EOF = FJ_EOF


cdef inline object _oserror(int err):
    return OSError(err, _os.strerror(err))


cpdef int try_read(int fd) except -1:
    """One non-blocking read of one token byte (fd must be non-blocking)."""
    cdef int r = fj_try_read(fd)
    if r == -1:
        raise _oserror(errno)
    return r


cpdef int read_blocking(int fd) except -1:
    """One read that may block (reader thread only); the GIL is released."""
    cdef int r
    with nogil:
        r = fj_read_blocking(fd)
    if r == -1:
        raise _oserror(errno)
    return r


cpdef int read_nowait(int fd) except -1:
    """preadv2(RWF_NOWAIT): a non-blocking read on a blocking, shared fd."""
    cdef int r = fj_read_nowait(fd)
    if r == -1:
        raise _oserror(errno)
    return r


cpdef int write(int fd, int byte) except -1:
    """Write one token byte (EINTR retried; may block on a blocking fd)."""
    cdef int r
    with nogil:
        r = fj_write(fd, byte)
    if r == -1:
        raise _oserror(errno)
    return 0


cpdef int write_nowait(int fd, int byte) except -1:
    """Write one token byte without ever blocking and without touching the
    description's flags: 0, or AGAIN when the pipe is full."""
    cdef int r = fj_write_nowait(fd, byte)
    if r == -1:
        raise _oserror(errno)
    return r


cdef int _timeout_ms(object timeout) except? -2:
    if timeout is None:
        return -1
    return <int>max(0.0, min(float(timeout) * 1000.0 + 0.999, 2147483647.0))


def wait_readable(int fd, int cancel_fd=-1, timeout=None):
    """Block (GIL released) until fd is readable: 1, cancel_fd is: 2, timeout: 0.

    A signal interrupts the wait: its Python handler runs here (so Ctrl-C
    raises KeyboardInterrupt at once) and, if it returns, the wait goes on
    for the time that is left."""
    cdef int ms = _timeout_ms(timeout)
    cdef double deadline = -1.0
    cdef int r
    if ms >= 0:
        deadline = _monotonic() + ms / 1000.0
    while True:
        with nogil:
            r = fj_wait_readable(fd, cancel_fd, ms)
        if r == FJ_INTR:
            PyErr_CheckSignals()  # raises what the handler raised
            if deadline >= 0:
                ms = <int>max(0.0, (deadline - _monotonic()) * 1000.0 + 0.999)
            continue
        if r == -1:
            raise _oserror(errno)
        return r


def available(int fd):
    """Bytes (tokens) in the pipe right now (FIONREAD)."""
    cdef int r
    with nogil:
        r = fj_available(fd)
    if r == -1:
        raise _oserror(errno)
    return r


def fill(int fd, int byte, int n):
    """Write n token bytes to a non-blocking fd; returns how many fitted."""
    cdef int r
    with nogil:
        r = fj_fill(fd, byte, n)
    if r == -1:
        raise _oserror(errno)
    return r


def drain(int fd, int cap=1 << 20):
    """Read every byte available now from a non-blocking fd (at most cap)."""
    cdef unsigned char *buf = <unsigned char *>malloc(cap if cap > 0 else 1)
    cdef int r
    if buf == NULL:
        raise MemoryError()
    try:
        with nogil:
            r = fj_drain(fd, buf, cap)
        if r == -1:
            raise _oserror(errno)
        return buf[:r]
    finally:
        free(buf)


def reopen_private(int fd, int flags):
    """Open /proc/self/fd/N: a new description of the same pipe (Linux)."""
    cdef int r
    with nogil:
        r = fj_reopen_private(fd, flags)
    if r == -1:
        raise _oserror(errno)
    return r


def fd_info(int fd):
    """(st_mode, st_dev, st_ino, st_uid, F_GETFL flags, F_GETFD flags) of fd."""
    cdef fj_fd_info_t info
    cdef int r
    with nogil:
        r = fj_fd_info(fd, &info)
    if r == -1:
        raise _oserror(errno)
    return (info.mode, info.dev, info.ino, info.uid, info.fl_flags, info.fd_flags)


# -- signal masks: the critical sections of the client's slow paths --------------
cdef extern from "fastjob_io.h" nogil:
    ctypedef struct fj_sigset_t:
        pass
    int fj_block_all(fj_sigset_t *old)
    int fj_set_mask(const fj_sigset_t *m)
    int fj_mask_empty(const fj_sigset_t *m)
    void fj_mask_clear(fj_sigset_t *m)

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.pythread cimport PyThread_get_thread_ident
import threading as _threading

cdef unsigned long _main_ident = PyThread_get_thread_ident()
cdef fj_sigset_t _empty_mask
fj_mask_clear(&_empty_mask)


#: how deep the main thread is in block_signals() sections, and the mask
#: the outermost one found (put back when the depth returns to 0)
cdef int _sig_depth = 0
cdef fj_sigset_t _outer_mask


def _after_fork_child():
    global _main_ident, _sig_depth
    _main_ident = PyThread_get_thread_ident()
    _sig_depth = 0  # (the forking thread's mask is the child's: not ours to restore)


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_child)


cdef int _handoff_whole(object handoff) except -1:
    """Call the client's hand-off with signals blocked.  A handler whose
    signal came before the block runs at the hand-off's first instruction
    and may raise there, before any of it ran: then it is called again (the
    handler has run; no new one can come in), so a freed slot is never left
    with its waiters asleep.  The handler's exception is raised after."""
    level = signal_level()
    cdef object exc = None
    try:
        block_signals()
    except BaseException as e:
        exc = e
    try:
        try:
            handoff()
        except BaseException as e:
            if exc is None:
                exc = e
            handoff()
    finally:
        restore_signals(level)
    if exc is not None:
        raise exc
    return 0


def signal_level():
    """How deep this thread is in block_signals() sections (0 outside any;
    always 0 off the main thread).  The protocol, which no raise can break::

        level = signal_level()
        try:
            block_signals()
            ...  # the critical section
        finally:
            restore_signals(level)

    Nothing is handed from block to restore: a handler that raises at
    block_signals' return (CPython runs it there when the signal went to
    another thread) finds the section's ``finally`` already in force."""
    if PyThread_get_thread_ident() != _main_ident:
        return 0
    return _sig_depth


def block_signals():
    """Block every signal in this thread if it is the main thread (the only
    one whose Python handlers run), one level deeper.

    Python handlers of signals that arrived just before run here, with the
    mask already set; one that raises raises from here, before the section
    (the caller's ``finally: restore_signals(level)`` undoes the block)."""
    global _sig_depth
    if PyThread_get_thread_ident() != _main_ident:
        return None
    if _sig_depth == 0:
        if fj_block_all(&_outer_mask) != 0:
            return None  # Windows: no signal masks
    _sig_depth += 1
    PyErr_CheckSignals()
    return None


def restore_signals(int level):
    """Back to ``level`` (what signal_level() said before the section):
    at 0 the mask the outermost section found is set again, and a signal
    that came meanwhile is handled now."""
    global _sig_depth
    if PyThread_get_thread_ident() != _main_ident:
        return None
    if level < 0:
        level = 0
    if _sig_depth > level:
        _sig_depth = level
        if level == 0:
            fj_set_mask(&_outer_mask)
    return None


# ---------------------------------------------------------------------------
# Windows semaphore jobserver (src/fastjob_io_win.h).  These exist on every
# platform; off Windows each call raises OSError(ENOSYS).  Handles are ints.
# Nothing above this block depends on it: the POSIX hot path is unchanged.
# ---------------------------------------------------------------------------

cdef extern from "fastjob_io.h" nogil:
    ctypedef long long fj_handle_t
    int FJ_SEM_TIMEOUT
    int FJ_SEM_ACQUIRED
    int FJ_SEM_CANCELLED
    unsigned long fj_win_last_error()
    int fj_sem_create(const char *name, int count, int max_count, fj_handle_t *out)
    int fj_sem_open(const char *name, fj_handle_t *out)
    int fj_sem_try(fj_handle_t sem)
    int fj_sem_wait(fj_handle_t sem, fj_handle_t cancel, int timeout_ms)
    int fj_sem_release(fj_handle_t sem)
    int fj_sem_count(fj_handle_t sem)
    int fj_event_create(fj_handle_t *out)
    int fj_event_set(fj_handle_t ev)
    int fj_handle_close(fj_handle_t h)

SEM_TIMEOUT = FJ_SEM_TIMEOUT
SEM_ACQUIRED = FJ_SEM_ACQUIRED
SEM_CANCELLED = FJ_SEM_CANCELLED


cdef object _winerror(int err):
    """OSError from errno, naming the Windows error code when there is one."""
    cdef unsigned long code = fj_win_last_error()
    if code:
        return OSError(err, f"{_os.strerror(err)} (Windows error {code})")
    return _oserror(err)


def sem_create(str name, int count, int max_count):
    """CreateSemaphore(count, max_count, name): a new pool; EEXIST if taken."""
    cdef bytes b = name.encode("ascii")
    cdef const char *c = b
    cdef fj_handle_t h = 0
    cdef int r
    with nogil:
        r = fj_sem_create(c, count, max_count, &h)
    if r == -1:
        raise _winerror(errno)
    return h


def sem_open(str name):
    """OpenSemaphore(SYNCHRONIZE | SEMAPHORE_MODIFY_STATE | SEMAPHORE_QUERY_STATE, name)."""
    cdef bytes b = name.encode("ascii")
    cdef const char *c = b
    cdef fj_handle_t h = 0
    cdef int r
    with nogil:
        r = fj_sem_open(c, &h)
    if r == -1:
        raise _winerror(errno)
    return h


def sem_try(long long sem):
    """Take a token if one is free now: True, else False.  Never blocks."""
    cdef int r
    with nogil:
        r = fj_sem_try(sem)
    if r == -1:
        raise _winerror(errno)
    return r == 1


def sem_wait(long long sem, long long cancel=0, timeout=None):
    """WaitForMultipleObjects([cancel, sem]) with the GIL released:
    SEM_ACQUIRED, SEM_CANCELLED or SEM_TIMEOUT."""
    cdef int ms = -1
    cdef int r
    if timeout is not None:
        ms = <int>max(0.0, min(float(timeout) * 1000.0 + 0.999, 2147483647.0))
    with nogil:
        r = fj_sem_wait(sem, cancel, ms)
    if r == -1:
        raise _winerror(errno)
    return r


def sem_release(long long sem):
    """ReleaseSemaphore(sem, 1); EOVERFLOW above the maximum count."""
    cdef int r
    with nogil:
        r = fj_sem_release(sem)
    if r == -1:
        raise _winerror(errno)


def sem_count(long long sem):
    """The semaphore's current count, without taking any (NtQuerySemaphore)."""
    cdef int r
    with nogil:
        r = fj_sem_count(sem)
    if r == -1:
        raise _winerror(errno)
    return r


def event_create():
    """An unsignalled auto-reset event (the cancel handle of sem_wait)."""
    cdef fj_handle_t h = 0
    cdef int r
    with nogil:
        r = fj_event_create(&h)
    if r == -1:
        raise _winerror(errno)
    return h


def event_set(long long ev):
    """SetEvent: wakes one sem_wait on this event."""
    cdef int r
    with nogil:
        r = fj_event_set(ev)
    if r == -1:
        raise _winerror(errno)


def handle_close(long long h):
    """CloseHandle."""
    cdef int r
    with nogil:
        r = fj_handle_close(h)
    if r == -1:
        raise _winerror(errno)


# -- the token core ---------------------------------------------------------
# One Core per pool per Client: the implicit token (a C flag), the count of
# pool tokens held (and of each byte value, so close() can write back what was
# read without a registry of tokens), and the reads and writes of the fast
# path.  Between a read and the recording of its token, and between taking a
# token's record and writing its byte, no Python code runs: a signal handler
# that raises (Ctrl-C) can only do so before or after, never in between.
# The FIFO queue of waiters is the WaiterQueue below (one per Client, beside
# its Core); it keeps ``nwait`` up to date so that the fast path never jumps
# the queue.

READ_FD = 0       # read(2) on a non-blocking description of our own
READ_NOWAIT = 1   # preadv2(RWF_NOWAIT) on a shared blocking description
READ_NONE = 2     # a blocking shared description: only a reader thread reads
READ_PY = 3       # transport.try_read() (Windows semaphore)
WRITE_FD = 0      # write(2) on a non-blocking description
WRITE_NOWAIT = 1  # pwritev2(RWF_NOWAIT) / poll+write on a shared description
WRITE_LOCKED = 2  # transport._wfd under transport._lock (the FIFO reopens it)
WRITE_PY = 3      # transport.write(byte)

cdef object _TokenLeakWarning = UserWarning


def _set_leak_warning(cls):
    global _TokenLeakWarning
    _TokenLeakWarning = cls


cdef class Core


# The leak check is in __dealloc__ (tp_dealloc), not __del__ (tp_finalize):
# no finalizer call on every dealloc, and a freelist can recycle Tokens (a
# finalized object would keep its "finalized" bit).  no_gc_clear: a Token
# in a garbage cycle keeps its _holder until __dealloc__ has looked at it.
@cython.final
@cython.no_gc_clear
@cython.freelist(64)
cdef class Token:
    """A held job slot.  ``release()`` is sync, idempotent and thread-safe and
    writes back the byte that was read; the implicit token writes nothing.

    Use it as a context manager, or release it yourself.  A Token garbage
    collected unreleased is released with a TokenLeakWarning.
    """

    cdef Core _holder
    cdef readonly int _byte
    cdef readonly long long _gen
    cdef object __weakref__

    def __init__(self):
        raise TypeError("Tokens come from a fastjob Client (acquire, try_acquire, ...)")

    @property
    def _core(self):
        """The Core that holds this token; None once released."""
        return self._holder

    @property
    def implicit(self):
        """True for the process's implicit token (never in the pool)."""
        return self._byte < 0

    @property
    def byte(self):
        """The byte read from the pool (echoed on release); None if implicit."""
        return None if self._byte < 0 else bytes((self._byte,))

    @property
    def released(self):
        """True once the token has been given back."""
        return self._holder is None

    def release(self):
        """Give the token back (writes its byte to the pool; a no-op the
        second time)."""
        cdef Core core = self._holder
        if core is not None:
            core._give(self)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        cdef Core core = self._holder
        if core is not None:
            core._give(self)

    def __dealloc__(self):
        cdef Core core = self._holder
        if core is None:
            return
        # Release first, before any Python code runs (a signal handler may
        # raise in it; a warning turned into an error must not lose it).
        try:
            core._give(self)
        except BaseException:
            self._holder = None
            core._lost(self)
        _warnings.warn(
            f"fastjob: <fastjob.Token {'implicit' if self._byte < 0 else 'byte=' + repr(bytes((self._byte,)))}> "
            "was garbage collected without release(); it has been returned to the pool",
            _TokenLeakWarning,
            stacklevel=2,
        )

    def __repr__(self):
        kind = "implicit" if self._byte < 0 else f"byte={bytes((self._byte,))!r}"
        state = "released" if self._holder is None else "held"
        return f"<fastjob.Token {kind} {state}>"


import warnings as _warnings


@cython.final
cdef class Core:
    """The token state of one Client on one pool (see the comment above)."""

    cdef int rfd
    cdef int wfd
    cdef int read_mode
    cdef int write_mode
    cdef object transport
    cdef object slow
    cdef public object handoff
    cdef public object on_write_error
    cdef public object full_error
    cdef public bint closed
    cdef public bint owns_implicit
    cdef public bint implicit_free
    cdef public long long gen
    cdef public long long acquired
    cdef public Py_ssize_t nwait
    cdef public object solo
    cdef readonly Py_ssize_t held
    cdef Py_ssize_t counts[256]

    def __init__(self, transport, int rfd, int wfd, int read_mode, int write_mode,
                 bint owns_implicit, long long gen, slow, handoff, on_write_error, full_error):
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
        self.solo = None
        self.held = 0
        cdef int i
        for i in range(256):
            self.counts[i] = 0

    cdef inline Token _new(self, int b):
        cdef Token tok = Token.__new__(Token)
        tok._holder = self
        tok._byte = b
        tok._gen = self.gen
        if b >= 0:
            self.counts[b] += 1
            self.held += 1
        self.acquired += 1
        return tok

    cdef int _read(self) except -1:
        cdef int r
        if self.read_mode == 0:
            r = fj_try_read(self.rfd)
        elif self.read_mode == 1:
            r = fj_read_nowait(self.rfd)
        elif self.read_mode == 2:
            return FJ_AGAIN
        else:
            return self.transport.try_read()
        if r == -1:
            raise _oserror(errno)
        return r

    def try_acquire(self):
        """Client.try_acquire: the implicit token, else a pool byte read now,
        else None; the client's slow path while waiters queue, when closed,
        or when only a reader thread may read."""
        if self.closed or self.nwait or self.solo is not None:
            return self.slow()
        if self.implicit_free:
            self.implicit_free = False
            return self._new(-1)
        if self.read_mode == 2:
            return self.slow()
        return self.take()

    cpdef Token take(self):
        """A Token for a pool byte read now, or None; JobserverClosedError
        at EOF.  Ignores the queue (the caller is the queue's pump)."""
        cdef int r = self._read()
        if r == FJ_AGAIN:
            return None
        if r == FJ_EOF:
            raise self.transport.closed_error()
        if self.closed:
            # close() ran while a Python read (READ_PY) let another thread
            # in: it gave back what it found held, and this was not
            self._read_after_close(r)
        return self._new(r)

    cdef int _read_after_close(self, int b) except -1:
        try:
            self.transport.write(b)
        except Exception:
            pass  # the pool is gone: nowhere to go
        self.slow()  # raises the client's closed error
        raise RuntimeError("fastjob: a closed client's core read a token")

    cpdef Token take_implicit(self):
        """The implicit token if it is free, else None (ignores the queue)."""
        if self.implicit_free and not self.closed:
            self.implicit_free = False
            return self._new(-1)
        return None

    def solo_wait(self, w, excl, int wake_fd, timeout):
        """The lone waiter's wait: while ``self.solo is w`` (a thread that
        found nobody queued), wait for the pool (in excl's epoll set, else
        poll with wake_fd; GIL released) and read: the Token, recorded, with
        ``solo`` cleared, and no Python code between the wake, the read and
        the record.  Else 0 (timeout), 2 (wake_fd is readable), 1 (the pool
        is readable but w was put in the queue meanwhile: the caller reads
        for the queue), 3 (w was put in the queue before it waited).  A
        signal's Python handler runs here; if it raises, so does this."""
        cdef int ms = _timeout_ms(timeout)
        cdef double deadline = -1.0
        cdef int ep = -1 if excl is None else excl.epfd
        cdef int rfd = self.rfd
        cdef int r
        if ms >= 0:
            deadline = _monotonic() + ms / 1000.0
        while True:
            if self.solo is not w:
                return 3
            with nogil:
                if ep >= 0:
                    r = fj_wait_pool(ep, rfd, ms)
                else:
                    r = fj_wait_readable(rfd, wake_fd, ms)
            if r == FJ_INTR:
                PyErr_CheckSignals()  # raises what the handler raised
            elif r == -1:
                raise _oserror(errno)
            elif r != 1:
                return r
            elif self.solo is not w:
                return 1
            else:
                r = self._read()
                if r == FJ_EOF:
                    raise self.transport.closed_error()
                if r != FJ_AGAIN:
                    self.solo = None
                    return self._new(r)
                # another process read it first: wait again
            if deadline >= 0:
                ms = <int>max(0.0, (deadline - _monotonic()) * 1000.0 + 0.999)

    def solo_claim(self):
        """Take the lone waiter (to queue it), or None."""
        cdef object w = self.solo
        self.solo = None
        return w

    def solo_leave(self, w):
        """w stops waiting alone: True if it was still the lone waiter."""
        if self.solo is w:
            self.solo = None
            return True
        return False

    cpdef Token adopt(self, int byte):
        """A held Token for a byte read by someone else (the reader thread)."""
        return self._new(byte)

    cdef int _write(self, int b) except? -1:
        cdef int r
        cdef int fd
        if self.write_mode == 0:
            r = fj_try_write(self.wfd, b)
        elif self.write_mode == 1:
            r = fj_write_nowait(self.wfd, b)
        elif self.write_mode == 2:
            lock = self.transport._lock
            lock.acquire()  # (may let another thread in: close() too)
            try:
                if self.closed:
                    return FJ_CLOSED  # close() counted it held and wrote it back
                fd = self.transport._wfd
                if fd >= 0:
                    r = fj_try_write(fd, b)
            finally:
                lock.release()
            if fd < 0:
                self.transport.write(b)  # reopens the writer (rare)
                return 0
        else:
            self.transport.write(b)
            return 0
        if r == -1:
            raise _oserror(errno)
        return r

    cdef int _give(self, Token tok) except -1:
        if tok._holder is not self:
            return 0
        tok._holder = None
        if tok._gen != self.gen:
            return 0  # taken before a fork: the parent process gives it back
        cdef int b = tok._byte
        if b < 0:
            if self.closed or not self.owns_implicit:
                return 0
            self.implicit_free = True
            if self.nwait or self.solo is not None:
                _handoff_whole(self.handoff)  # the client passes it to the oldest waiter
            return 0
        if self.closed:
            return 0  # close() wrote it back already
        cdef int r
        try:
            r = self._write(b)
        except OSError as exc:
            if exc.errno in (EPIPE, EBADF, ENXIO):
                self._lost(tok)  # the pool is gone: the byte has nowhere to go
            else:
                tok._holder = self  # not written (out of fds...): still held
            self.on_write_error(exc)
            raise
        except Exception as exc:
            # The transport's own error: a FIFO writer that cannot be reopened
            # keeps the token held (release() again, or close(), writes it).
            if getattr(exc, "pool_gone", False):
                self._lost(tok)
            else:
                tok._holder = self
            raise
        if r == FJ_AGAIN:
            tok._holder = self  # still held: a later release() may succeed
            raise self.full_error()
        if r != FJ_CLOSED:
            self._lost(tok)
        return 0

    cdef void _lost(self, Token tok):
        """Forget a pool token's record (written back, or unwritable)."""
        if tok._byte >= 0 and tok._gen == self.gen and self.counts[tok._byte] > 0:
            self.counts[tok._byte] -= 1
            self.held -= 1

    def give(self, Token tok):
        """Release tok (Token.release)."""
        if tok._holder is self:
            self._give(tok)

    def flush(self):
        """The pure twin's hook for a byte a signal handler left between a
        read and its token; here no Python code runs in between."""

    def held_bytes(self):
        """The bytes of the pool tokens still held, forgetting them (close)."""
        cdef list out = []
        cdef int i
        cdef Py_ssize_t n
        for i in range(256):
            n = self.counts[i]
            while n > 0:
                out.append(i)
                n -= 1
            self.counts[i] = 0
        self.held = 0
        return out

    def after_fork(self, long long gen):
        """In a forked child: it holds none of the parent's tokens."""
        self.held_bytes()
        self.gen = gen
        self.solo = None
        self.owns_implicit = False
        self.implicit_free = False
        self.nwait = 0


# -- the waiter queue ------------------------------------------------------------
# The native twin of fastjob/_core/queue.py's PyWaiterQueue (see there for
# what each method does and why): the same interface, so the client's hand-off
# runs no Python frame of the queue's own.  No signal handler can run in the
# middle of one of these methods, save inside a waiter's LoopState.prune()
# (trio and the led strategies, called at the end; the client blocks signals
# around every call anyway): nothing else they call evaluates bytecode (the
# weak references' callback is a list's append, Waiter has slots).
from collections import deque as _deque
from weakref import ref as _weakref


@cython.final
cdef class WaiterQueue:
    """The waiters of one client, oldest first (fastjob/_core/queue.py)."""

    cdef public object order
    cdef public set pending
    cdef public set resuming
    cdef public dict gathered
    cdef public list orphans
    cdef readonly list died
    cdef public Py_ssize_t nwait
    cdef object _core
    cdef Core _ncore
    cdef object _died_append

    def __init__(self, core):
        self._core = core
        self._ncore = core if type(core) is Core else None
        self.order = _deque()
        self.pending = set()
        self.resuming = set()
        self.gathered = {}
        self.orphans = []
        self.died = []
        self._died_append = self.died.append
        self.nwait = 0

    cdef inline void _count(self) except *:
        self.nwait = len(self.pending)
        cdef Py_ssize_t n = self.nwait + len(self.resuming)
        if self._ncore is not None:
            self._ncore.nwait = n
        else:
            self._core.nwait = n

    def enqueue(self, w, bint front=False):
        w.gone = False
        ref = _weakref(w, self._died_append)
        w.ref = ref
        if front:
            self.order.appendleft(ref)
        else:
            self.order.append(ref)
        self.pending.add(ref)
        self.gathered[ref] = w.got
        self._count()
        return ref

    def head(self):
        cdef object q = self.order
        w = q[0]() if q else None
        if w is None or w.gone:
            self._prune()
            w = q[0]() if q else None
        return w

    cdef void _prune(self) except *:
        cdef object q = self.order
        while q:
            ref = q[0]
            w = ref()
            if w is not None and not w.gone:
                break
            q.popleft()
            if w is None and ref in self.pending:
                self.pending.discard(ref)
                self._orphan(ref)
                self._count()

    cdef inline void _orphan(self, ref) except *:
        got = self.gathered.pop(ref, None)
        if got:
            self.orphans.extend(got)

    def prune(self):
        self._prune()

    def sweep(self, bint scan=False):
        self._prune()
        cdef list dead = self.died
        while dead:
            ref = dead[len(dead) - 1]  # (this module is built with wraparound=False)
            try:
                self.pending.discard(ref)
                self.resuming.discard(ref)
                self._orphan(ref)
            except TypeError:
                pass
            try:
                dead.remove(ref)
            except ValueError:
                pass
        if scan:
            for ref in [r for r in self.gathered if r() is None]:
                self.pending.discard(ref)
                self.resuming.discard(ref)
                self._orphan(ref)
        self._count()
        orphans = self.orphans
        self.orphans = []
        return orphans

    def unlink(self, w):
        if w.gone:
            return
        w.gone = True
        self.pending.discard(w.ref)
        self._count()
        self._prune()
        st = w.state
        if st is not None:
            st.prune()

    def leave(self, w):
        self.unlink(w)
        ref = w.ref
        if ref is not None:
            self.resuming.discard(ref)
            self.gathered.pop(ref, None)
            self._count()
        got = w.got
        w.got = []
        w.done = False
        return got

    def resumed(self, w):
        ref = w.ref
        if ref is not None:
            self.resuming.discard(ref)
            self.gathered.pop(ref, None)
            self._count()

    def live(self):
        cdef list out = []
        for ref in self.order:
            w = ref()
            if w is not None and not w.gone:
                out.append(w)
        return out

    def serve(self, w, tok):
        cdef list got = w.got
        got.append(tok)
        if len(got) < w.need:
            return False
        w.done = True
        w.gone = True
        self.order.popleft()
        ref = w.ref
        self.pending.discard(ref)
        self.resuming.add(ref)
        self._count()
        st = w.state
        if st is not None:
            st.prune()
        return True

    def clear(self):
        self.order.clear()
        self.pending.clear()
        self.resuming.clear()
        self.gathered.clear()
        self.orphans.clear()
        self.died.clear()
        self._count()


# -- a ready awaitable: ``await ready(x)`` is x, with no coroutine frame -------
# ``async with client.token()`` on asyncio with a token free: __aenter__ and
# __aexit__ return one of these instead of a coroutine.  The type's am_send
# (Python 3.10+; what the interpreter's SEND calls) returns the value without
# raising StopIteration; __next__ is the fallback (tracing, older Pythons).
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF

cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030A0000
    #define FJ_HAVE_AM_SEND 1
    static PySendResult fj_ready_send_impl(PyObject *self, PyObject *arg, PyObject **result);
    static int fj_install_am_send(PyTypeObject *t) {
        if (t->tp_as_async == NULL) return 0;
        t->tp_as_async->am_send = (sendfunc)fj_ready_send_impl;
        PyType_Modified(t);
        return 1;
    }
    #else
    #define FJ_HAVE_AM_SEND 0
    static int fj_install_am_send(PyTypeObject *t) { (void)t; return 0; }
    #endif
    """
    int fj_install_am_send(PyTypeObject *t)


@cython.final
@cython.freelist(16)
cdef class Ready:
    """An awaitable that is done already: ``await Ready-of-x`` gives x."""

    cdef object value

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        v = self.value
        self.value = None
        raise StopIteration(v)

    def send(self, arg):
        return self.__next__()

    def throw(self, typ, val=None, tb=None):
        self.value = None
        if val is None:
            raise typ  # an exception instance, or a class to instantiate
        raise val

    def close(self):
        self.value = None


cdef int fj_ready_send_cy "fj_ready_send_cy"(PyObject *self, PyObject **result) noexcept:
    cdef Ready r = <Ready>self
    cdef object v = r.value
    r.value = None
    Py_INCREF(v)
    result[0] = <PyObject *>v
    return 0


cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030A0000
    static int fj_ready_send_cy(PyObject *self, PyObject **result);
    static PySendResult fj_ready_send_impl(PyObject *self, PyObject *arg, PyObject **result) {
        (void)arg;
        fj_ready_send_cy(self, result);
        return PYGEN_RETURN;
    }
    #endif
    """

AM_SEND = 1 if fj_install_am_send(<PyTypeObject *>Ready) else 0  # an int, as every constant here


def ready(value=None):
    """A Ready awaitable for value."""
    cdef Ready r = Ready.__new__(Ready)
    r.value = value
    return r


# -- ``async with client.token()``: the context, in C ---------------------------
import sys as _sys

cdef object _get_running_loop = None
cdef object _READY_NONE = ready(None)  # shared: its value stays None


cdef inline bint _on_asyncio():
    """A running asyncio loop in this thread (else: trio)."""
    global _get_running_loop
    cdef object get = _get_running_loop
    if get is None:
        aio = _sys.modules.get("asyncio")
        if aio is None:
            return False
        get = _get_running_loop = aio._get_running_loop
    return get() is not None


@cython.final
@cython.freelist(16)
cdef class TokenContext:
    """``async with client.token() as tok``.  On asyncio with a token free
    now, __aenter__ takes it and returns a Ready (no coroutine frame, no
    Python frame); otherwise the client's coroutine waits (trio: a full
    checkpoint).  __aexit__ releases at once."""

    cdef object _client
    cdef object _try
    cdef public object token

    def __aenter__(self):
        cdef object tok
        cdef Ready r
        if _on_asyncio():
            tok = self._try()
            if tok is not None:
                self.token = tok
                r = Ready.__new__(Ready)
                r.value = tok
                return r
            return self._client._ctx_wait(self)
        return self._client._ctx_acquire(self)

    def __aexit__(self, exc_type, exc, tb):
        cdef object tok = self.token
        if tok is not None:
            self.token = None
            tok.release()
        return _READY_NONE


@cython.final
cdef class TokenContexts:
    """Client.token: makes a TokenContext per call (one C call)."""

    cdef object _client
    cdef object _try

    def __init__(self, client, try_loop):
        self._client = client
        self._try = try_loop

    def __call__(self):
        cdef TokenContext c = TokenContext.__new__(TokenContext)
        c._client = self._client
        c._try = self._try
        return c
