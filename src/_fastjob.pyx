# cython: language_level=3, boundscheck=False, wraparound=False
"""Native token I/O for fastjob: thin wrappers over src/fastjob_io.h.

Every syscall runs with the GIL released.  Reads return the token byte
(0..255), AGAIN (-2) when no token is there now, EOF (-3) when the pool's
writers are all gone; other failures raise OSError.
"""

from libc.errno cimport errno
from libc.stdlib cimport malloc, free

cdef extern from "fastjob_io.h" nogil:
    int FJ_AGAIN
    int FJ_EOF
    int fj_try_read(int fd)
    int fj_read_blocking(int fd)
    int fj_read_nowait(int fd)
    int fj_write(int fd, int byte)
    int fj_wait_readable(int fd, int cancel_fd, int timeout_ms)
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

AGAIN = FJ_AGAIN
EOF = FJ_EOF


cdef inline object _oserror(int err):
    return OSError(err, _os.strerror(err))


cpdef int try_read(int fd) except -1:
    """One non-blocking read of one token byte (fd must be non-blocking)."""
    cdef int r
    with nogil:
        r = fj_try_read(fd)
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
    cdef int r
    with nogil:
        r = fj_read_nowait(fd)
    if r == -1:
        raise _oserror(errno)
    return r


cpdef int write(int fd, int byte) except -1:
    """Write one token byte (EINTR retried)."""
    cdef int r
    with nogil:
        r = fj_write(fd, byte)
    if r == -1:
        raise _oserror(errno)
    return 0


def wait_readable(int fd, int cancel_fd=-1, timeout=None):
    """Block (GIL released) until fd is readable: 1, cancel_fd is: 2, timeout: 0."""
    cdef int ms = -1
    cdef int r
    if timeout is not None:
        ms = <int>max(0.0, min(float(timeout) * 1000.0 + 0.999, 2147483647.0))
    with nogil:
        r = fj_wait_readable(fd, cancel_fd, ms)
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


# -- the hot path: Token and PoolCore ------------------------------------------
# try_acquire on a pipe pool is one call into PoolCore.take (read + Token +
# bookkeeping in C); Token.release of a pool token is PoolCore.give (dict pop
# + write).  The pure twin lives in fastjob/_token.py and fastjob/_io_py.py.

import warnings as _warnings

cdef object _TokenLeakWarning = None


def _set_leak_warning(cls):
    global _TokenLeakWarning
    _TokenLeakWarning = cls


cdef class Token:
    """A held job slot.  ``release()`` is sync, idempotent and thread-safe and
    writes back the byte that was read; the implicit token writes nothing.

    Use it as a context manager, or release it yourself.  A Token garbage
    collected unreleased is released with a TokenLeakWarning.
    """

    cdef public object _client
    cdef public int _byte
    cdef public int _gen
    cdef public object _core
    cdef object __weakref__

    def __init__(self, client, int byte, int gen):
        self._client = client
        self._byte = byte
        self._gen = gen
        self._core = None

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
        return self._client is None

    cpdef release(self):
        """Give the token back (writes its byte to the pool; a no-op the
        second time)."""
        if self._client is None:
            return
        if self._core is not None:
            (<PoolCore>self._core).give(self)
        else:
            self._client._release(self)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.release()

    def __del__(self):
        if self._client is None:
            return
        what = repr(self)
        # Release first: a warning turned into an error must not lose it.
        self._client._release(self, True)
        _warnings.warn(
            f"fastjob: {what} was garbage collected without release(); "
            "it has been returned to the pool",
            _TokenLeakWarning,
            stacklevel=2,
        )

    def __repr__(self):
        kind = "implicit" if self._byte < 0 else f"byte={bytes((self._byte,))!r}"
        state = "released" if self._client is None else "held"
        return f"<fastjob.Token {kind} {state}>"


cdef class PoolCore:
    """Reads and writes the tokens of one pipe pool for one Client.

    ``held`` is the client's dict id(token) -> byte: the pop in give() is
    atomic, so a token is written back exactly once whoever releases it.
    After bind(), try_acquire() is the client's whole fast path: it defers
    to the client's slow path while the implicit token is free, tasks are
    queued or the client is closed.
    """

    cdef int rfd
    cdef int wfd
    cdef bint nowait
    cdef dict held
    cdef public object on_write_error
    cdef object client
    cdef list implicit
    cdef object waiters
    cdef object slow
    cdef object lock_acquire
    cdef object lock_release
    cdef public bint owns_implicit
    cdef public bint closed
    cdef public int gen
    cdef public long long acquired

    def __init__(self, int rfd, int wfd, bint nowait, dict held, on_write_error):
        self.rfd = rfd
        self.wfd = wfd
        self.nowait = nowait
        self.held = held
        self.on_write_error = on_write_error
        self.closed = False
        self.gen = 0
        self.acquired = 0

    def bind(self, client, list implicit, waiters, slow, int gen, lock, bint owns_implicit):
        """Attach the client state the fast path must respect."""
        self.client = client
        self.implicit = implicit
        self.waiters = waiters
        self.slow = slow
        self.gen = gen
        self.lock_acquire = lock.acquire
        self.lock_release = lock.release
        self.owns_implicit = owns_implicit

    def try_acquire(self):
        """Client.try_acquire, fast path in C (see Client.try_acquire)."""
        cdef Token tok
        if self.closed or self.waiters:
            return self.slow()
        if self.implicit:
            # check and pop run under the GIL with no Python code between:
            # atomic, so the implicit token is handed out once
            self.implicit.pop()
            tok = Token.__new__(Token)
            tok._client = self.client
            tok._byte = -1
            tok._gen = self.gen
            tok._core = self
            self.acquired += 1
            return tok
        tok = self.take(self.client, self.gen)
        if tok is None:
            return None
        if type(tok) is int:
            return self.slow()  # EOF: the slow path raises the proper error
        self.acquired += 1
        return tok

    cpdef object take(self, object client, int gen):
        """A Token for a byte read now, None if the pool is empty, EOF (an
        int) when the pool is closed."""
        cdef int r
        with nogil:
            if self.nowait:
                r = fj_read_nowait(self.rfd)
            else:
                r = fj_try_read(self.rfd)
        if r == FJ_AGAIN:
            return None
        if r == FJ_EOF:
            return FJ_EOF
        if r == -1:
            raise _oserror(errno)
        cdef Token tok = Token.__new__(Token)
        tok._client = client
        tok._byte = r
        tok._gen = gen
        tok._core = self
        self.held[id(tok)] = r
        return tok

    cpdef give(self, Token tok):
        """Release a token: a pool token's byte is written back, once; the
        implicit token goes back to its slot (or, when tasks wait, through
        the client's slow path, which hands it on)."""
        if tok._byte < 0:
            self.lock_acquire()
            try:
                if tok._client is None:
                    return
                if not (self.waiters or self.closed or tok._gen != self.gen):
                    tok._client = None
                    if self.owns_implicit:
                        self.implicit.append(1)
                    return
            finally:
                self.lock_release()
            self.client._release(tok)
            return
        b = self.held.pop(id(tok), None)
        tok._client = None
        if b is None:
            return
        cdef int byte = b
        cdef int r
        with nogil:
            r = fj_write(self.wfd, byte)
        if r == -1:
            self.on_write_error(_oserror(errno))
