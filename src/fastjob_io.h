/*
 * fastjob_io.h - the jobserver token syscalls, in plain C (no Python).
 *
 * Every function reports failure as -1 with errno set, so the Cython layer can
 * turn it into OSError.  Reads return the token byte (0..255), FJ_AGAIN when no
 * token is there now, or FJ_EOF when every writer of the pool is gone.
 * EINTR is retried in the reads and writes (a signal is never a reason to
 * lose a token); a blocking wait returns FJ_INTR instead so that the caller
 * can run the signal handlers (Ctrl-C) before it waits again.
 *
 * On _WIN32 the POSIX part is replaced by the semaphore calls in
 * fastjob_io_win.h.
 */
#ifndef FASTJOB_IO_H
#define FASTJOB_IO_H

#define FJ_AGAIN (-2)
#define FJ_EOF (-3)
/* fj_wait_readable: a signal arrived; the caller runs Python's handlers
 * (PyErr_CheckSignals) and waits again, so Ctrl-C is never swallowed. */
#define FJ_INTR (-4)

#ifdef _WIN32
#include "fastjob_io_win.h"
/* The POSIX writes the core uses, failing with ENOSYS as the other POSIX
 * calls in fastjob_io_win.h do (Windows pools are semaphores). */
static FJ_INLINE int fj_try_write(int fd, int byte) { (void)fd; (void)byte; return fj_enosys_(); }
static FJ_INLINE int fj_write_nowait(int fd, int byte) { (void)fd; (void)byte; return fj_enosys_(); }
/* No signal masks on Windows: the critical sections need none there. */
typedef int fj_sigset_t;
static FJ_INLINE int fj_block_all(fj_sigset_t *old) { *old = 0; return -1; }
static FJ_INLINE int fj_set_mask(const fj_sigset_t *m) { (void)m; return 0; }
static FJ_INLINE int fj_mask_empty(const fj_sigset_t *m) { (void)m; return 1; }
static FJ_INLINE void fj_mask_clear(fj_sigset_t *m) { *m = 0; }
#else

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* One non-blocking read of one byte from a descriptor that is non-blocking
 * (private description or O_NONBLOCK already set by its owner). */
static inline int fj_try_read(int fd) {
    unsigned char byte;
    for (;;) {
        ssize_t n = read(fd, &byte, 1);
        if (n == 1) return (int)byte;
        if (n == 0) return FJ_EOF;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return FJ_AGAIN;
        return -1;
    }
}

/* A read that may block: used only by the reader thread, GIL released. */
static inline int fj_read_blocking(int fd) { return fj_try_read(fd); }

/* Non-blocking read on a possibly blocking, shared description:
 * preadv2(RWF_NOWAIT) leaves the description's flags alone (Linux, pipes
 * since 5.x; glibc >= 2.26).  Elsewhere: ENOSYS. */
static inline int fj_read_nowait(int fd) {
#if defined(__linux__) && defined(RWF_NOWAIT)
    unsigned char byte;
    struct iovec iov;
    iov.iov_base = &byte;
    iov.iov_len = 1;
    for (;;) {
        /* offset -1: the current position, as read() uses. */
        ssize_t n = preadv2(fd, &iov, 1, -1, RWF_NOWAIT);
        if (n == 1) return (int)byte;
        if (n == 0) return FJ_EOF;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return FJ_AGAIN;
        return -1;
    }
#else
    (void)fd;
    errno = ENOSYS;
    return -1;
#endif
}

/* Write one token byte back.  0 on success. */
static inline int fj_write(int fd, int byte) {
    unsigned char b = (unsigned char)byte;
    for (;;) {
        ssize_t n = write(fd, &b, 1);
        if (n == 1) return 0;
        if (n < 0 && errno == EINTR) continue;
        if (n == 0) errno = EIO;
        return -1;
    }
}

/* Write one token byte to a non-blocking description: 0, or FJ_AGAIN when
 * the pipe is full (the byte was not written). */
static inline int fj_try_write(int fd, int byte) {
    unsigned char b = (unsigned char)byte;
    for (;;) {
        ssize_t n = write(fd, &b, 1);
        if (n == 1) return 0;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return FJ_AGAIN;
        if (n == 0) errno = EIO;
        return -1;
    }
}

/* Write one token byte to a shared description that may be blocking, without
 * ever blocking and without touching its flags: pwritev2(RWF_NOWAIT) on Linux,
 * else poll(POLLOUT, 0) then write (a pipe that polls writable has room for
 * PIPE_BUF bytes, and a 1-byte write is atomic).  0, FJ_AGAIN (full), -1. */
static inline int fj_write_nowait(int fd, int byte) {
    unsigned char b = (unsigned char)byte;
#if defined(__linux__) && defined(RWF_NOWAIT)
    struct iovec iov;
    iov.iov_base = &b;
    iov.iov_len = 1;
    for (;;) {
        ssize_t n = pwritev2(fd, &iov, 1, -1, RWF_NOWAIT);
        if (n == 1) return 0;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return FJ_AGAIN;
        if (n < 0 && (errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS)) break;
        if (n == 0) errno = EIO;
        return -1;
    }
#endif
    for (;;) {
        struct pollfd p;
        p.fd = fd; p.events = POLLOUT; p.revents = 0;
        int r = poll(&p, 1, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) return FJ_AGAIN;
        if (p.revents & POLLNVAL) { errno = EBADF; return -1; }
        if (p.revents & (POLLERR | POLLHUP)) { errno = EPIPE; return -1; }
        break;
    }
    return fj_write(fd, b);
}

static inline long long fj_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until fd is readable (1; also on hang-up or error, so the caller's read
 * reports it), cancel_fd is readable (2), or timeout_ms passed (0).
 * timeout_ms < 0 waits forever; cancel_fd < 0 is ignored. */
static inline int fj_wait_readable(int fd, int cancel_fd, int timeout_ms) {
    struct pollfd p[2];
    long long deadline = timeout_ms >= 0 ? fj_now_ms() + timeout_ms : -1;
    int nfds = cancel_fd >= 0 ? 2 : 1;
    for (;;) {
        int wait_ms = -1;
        if (deadline >= 0) {
            long long left = deadline - fj_now_ms();
            wait_ms = left > 0 ? (int)left : 0;
        }
        p[0].fd = fd; p[0].events = POLLIN; p[0].revents = 0;
        p[1].fd = cancel_fd; p[1].events = POLLIN; p[1].revents = 0;
        int r = poll(p, nfds, wait_ms);
        if (r < 0) {
            if (errno == EINTR) return FJ_INTR;
            return -1;
        }
        if (r == 0) return 0;
        if (nfds == 2 && p[1].revents) return 2;
        if (p[0].revents & POLLNVAL) { errno = EBADF; return -1; }
        return 1;
    }
}

/* Wait in the epoll set ep (ExclusiveWait: the pool's fd with EPOLLEXCLUSIVE
 * and a wake-up pipe) until pool_fd is readable (1: reported first, so an
 * exclusive wake is never left unread), the other fd is (2), or timeout_ms
 * passed (0).  Without epoll (not Linux) it fails with ENOSYS. */
#ifdef __linux__
#include <sys/epoll.h>
static inline int fj_wait_pool(int ep, int pool_fd, int timeout_ms) {
    struct epoll_event ev[2];
    int n = epoll_wait(ep, ev, 2, timeout_ms);
    if (n < 0) return errno == EINTR ? FJ_INTR : -1;
    int r = 0;
    for (int i = 0; i < n; i++) {
        if (ev[i].data.fd == pool_fd) return 1;
        r = 2;
    }
    return r;
}
#else
static inline int fj_wait_pool(int ep, int pool_fd, int timeout_ms) {
    (void)ep; (void)pool_fd; (void)timeout_ms; errno = ENOSYS; return -1;
}
#endif

/* Bytes waiting in the pipe right now (FIONREAD). */
static inline int fj_available(int fd) {
    int n = 0;
    if (ioctl(fd, FIONREAD, &n) < 0) return -1;
    return n;
}

/* Write n copies of byte to a non-blocking fd; returns how many went in
 * (fewer than n when the pipe is full), -1 on another error. */
static inline int fj_fill(int fd, int byte, int n) {
    unsigned char buf[4096];
    int done = 0;
    memset(buf, (unsigned char)byte, sizeof buf);
    while (done < n) {
        size_t chunk = (size_t)(n - done) < sizeof buf ? (size_t)(n - done) : sizeof buf;
        ssize_t w = write(fd, buf, chunk);
        if (w > 0) { done += (int)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return done;
        return -1;
    }
    return done;
}

/* Read everything available from a non-blocking fd into buf (at most cap
 * bytes).  Returns the count; stops at EAGAIN or EOF. */
static inline int fj_drain(int fd, unsigned char *buf, int cap) {
    int got = 0;
    while (got < cap) {
        ssize_t r = read(fd, buf + got, (size_t)(cap - got));
        if (r > 0) { got += (int)r; continue; }
        if (r == 0) return got;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return got;
        return got > 0 ? got : -1;
    }
    return got;
}

/* A new, private open file description of the pipe behind fd (Linux
 * /proc/self/fd/N): its O_NONBLOCK is ours alone. */
static inline int fj_reopen_private(int fd, int flags) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    for (;;) {
        int r = open(path, flags | O_CLOEXEC);
        if (r < 0 && errno == EINTR) continue;
        return r;
    }
}

typedef struct {
    long long mode;     /* st_mode */
    long long dev;
    long long ino;
    long long uid;
    int fl_flags;       /* F_GETFL: access mode, O_NONBLOCK, ... */
    int fd_flags;       /* F_GETFD: FD_CLOEXEC */
} fj_fd_info_t;

static inline int fj_fd_info(int fd, fj_fd_info_t *info) {
    struct stat st;
    if (fstat(fd, &st) < 0) return -1;
    info->mode = (long long)st.st_mode;
    info->dev = (long long)st.st_dev;
    info->ino = (long long)st.st_ino;
    info->uid = (long long)st.st_uid;
    info->fl_flags = fcntl(fd, F_GETFL);
    if (info->fl_flags < 0) return -1;
    info->fd_flags = fcntl(fd, F_GETFD);
    if (info->fd_flags < 0) return -1;
    return 0;
}

/* Signal masks around the critical sections of the client's slow paths:
 * every signal blocked in this thread (old mask saved), then restored.  One
 * rt_sigprocmask each, no allocation. */
typedef sigset_t fj_sigset_t;
static inline int fj_block_all(fj_sigset_t *old) {
    sigset_t all;
    sigfillset(&all);
    /* the kernel fills only its own (smaller) sigset size, and sigemptyset
     * need not clear the rest: zero every byte, so fj_mask_empty can compare */
    memset(old, 0, sizeof *old);
    return pthread_sigmask(SIG_BLOCK, &all, old) == 0 ? 0 : -1;
}
static inline int fj_set_mask(const fj_sigset_t *m) {
    return pthread_sigmask(SIG_SETMASK, m, NULL) == 0 ? 0 : -1;
}
static inline int fj_mask_empty(const fj_sigset_t *m) {
    sigset_t e;
    memset(&e, 0, sizeof e);
    return memcmp(m, &e, sizeof e) == 0;
}
static inline void fj_mask_clear(fj_sigset_t *m) { memset(m, 0, sizeof *m); sigemptyset(m); }

/* The Windows semaphore calls exist here too, failing with ENOSYS. */
#include "fastjob_io_win.h"

#endif /* _WIN32 */
#endif /* FASTJOB_IO_H */
