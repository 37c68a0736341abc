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
