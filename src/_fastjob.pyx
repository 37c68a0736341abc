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
    """OpenSemaphore(SYNCHRONIZE | SEMAPHORE_MODIFY_STATE, name)."""
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
