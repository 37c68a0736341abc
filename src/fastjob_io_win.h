/*
 * fastjob_io_win.h - the Windows jobserver: a named semaphore, in plain C.
 *
 * GNU make on Windows creates CreateSemaphore(NULL, N-1, N-1,
 * "gmake_semaphore_<pid>") and names it in MAKEFLAGS; clients open it by name,
 * take a token with a wait and give it back with ReleaseSemaphore(h, 1).
 *
 * The functions below exist on every platform so that src/_fastjob.pyx can
 * declare them unconditionally: off Windows they fail with ENOSYS.  On
 * Windows the POSIX calls of fastjob_io.h (which has no meaning for a
 * semaphore) are provided as ENOSYS stubs instead, so the one extension
 * compiles everywhere.
 *
 * Handles travel as integers (fj_handle_t); 0 means "none".  Failures return
 * -1 with errno set (ENOENT: no such semaphore, EACCES, EEXIST: the name is
 * taken, EOVERFLOW: release above the maximum count, EINVAL: anything else);
 * fj_win_last_error() gives the Windows error code of the last failure.
 */
#ifndef FASTJOB_IO_WIN_H
#define FASTJOB_IO_WIN_H

#include <errno.h>

#ifndef FJ_AGAIN
#define FJ_AGAIN (-2)
#endif
#ifndef EOVERFLOW
#define EOVERFLOW 132
#endif
#ifndef ENOSYS
#define ENOSYS 40
#endif

/* Older MSVC C compilers spell it __inline. */
#if defined(_MSC_VER) && !defined(__cplusplus)
#define FJ_INLINE __inline
#else
#define FJ_INLINE inline
#endif

typedef long long fj_handle_t;

/* Results of fj_sem_wait. */
#define FJ_SEM_TIMEOUT 0
#define FJ_SEM_ACQUIRED 1
#define FJ_SEM_CANCELLED 2

#ifdef _WIN32

#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>

/* winnt.h of the SDK defines it; MinGW's does not. */
#ifndef SEMAPHORE_QUERY_STATE
#define SEMAPHORE_QUERY_STATE 0x0001
#endif

#if defined(_MSC_VER)
#define FJ_TLS __declspec(thread)
#else
#define FJ_TLS __thread
#endif
static FJ_TLS unsigned long fj_win_error_ = 0;

static FJ_INLINE unsigned long fj_win_last_error(void) { return fj_win_error_; }

/* Record GetLastError() and map it to errno; always returns -1. */
static FJ_INLINE int fj_win_fail(void) {
    DWORD e = GetLastError();
    fj_win_error_ = (unsigned long)e;
    switch (e) {
    case ERROR_FILE_NOT_FOUND:
    case ERROR_PATH_NOT_FOUND:
        errno = ENOENT; break;
    case ERROR_ACCESS_DENIED:
        errno = EACCES; break;
    case ERROR_ALREADY_EXISTS:
        errno = EEXIST; break;
    case ERROR_INVALID_HANDLE:
        errno = EBADF; break;
    case ERROR_TOO_MANY_POSTS:
        errno = EOVERFLOW; break;
    case ERROR_NOT_ENOUGH_MEMORY:
    case ERROR_OUTOFMEMORY:
        errno = ENOMEM; break;
    default:
        errno = EINVAL; break;
    }
    return -1;
}

/* Create a new semaphore NAME holding `count` tokens, at most `max_count`.
 * A name that already exists is an error (EEXIST): a server must own its pool. */
static FJ_INLINE int fj_sem_create(const char *name, int count, int max_count, fj_handle_t *out) {
    HANDLE h;
    *out = 0;
    if (count < 0 || max_count < 1 || count > max_count) {
        fj_win_error_ = ERROR_INVALID_PARAMETER;
        errno = EINVAL;
        return -1;
    }
    SetLastError(0);
    h = CreateSemaphoreA(NULL, (LONG)count, (LONG)max_count, name);
    if (h == NULL) return fj_win_fail();
    if (GetLastError() == ERROR_ALREADY_EXISTS) {
        CloseHandle(h);
        SetLastError(ERROR_ALREADY_EXISTS);
        return fj_win_fail();
    }
    *out = (fj_handle_t)(INT_PTR)h;
    return 0;
}

/* Open the semaphore a jobserver named (the client side); QUERY_STATE lets
 * fj_sem_count read it (make's own children open it with ALL_ACCESS). */
static FJ_INLINE int fj_sem_open(const char *name, fj_handle_t *out) {
    HANDLE h = OpenSemaphoreA(SYNCHRONIZE | SEMAPHORE_MODIFY_STATE | SEMAPHORE_QUERY_STATE,
                              FALSE, name);
    *out = 0;
    if (h == NULL) return fj_win_fail();
    *out = (fj_handle_t)(INT_PTR)h;
    return 0;
}

/* Take a token if one is free now: 1, else FJ_AGAIN.  Never blocks. */
static FJ_INLINE int fj_sem_try(fj_handle_t sem) {
    DWORD r = WaitForSingleObject((HANDLE)(INT_PTR)sem, 0);
    if (r == WAIT_OBJECT_0) return 1;
    if (r == WAIT_TIMEOUT) return FJ_AGAIN;
    return fj_win_fail();
}

/* Wait for a token (FJ_SEM_ACQUIRED), for `cancel` to be signalled
 * (FJ_SEM_CANCELLED; cancel 0 = none) or for timeout_ms (FJ_SEM_TIMEOUT;
 * < 0 waits forever).  When both are signalled the cancel wins and no token
 * is taken: WaitForMultipleObjects reports the lowest index, so the cancel
 * event goes first. */
static FJ_INLINE int fj_sem_wait(fj_handle_t sem, fj_handle_t cancel, int timeout_ms) {
    HANDLE hs[2];
    DWORD n = 0, r;
    DWORD ms = timeout_ms < 0 ? INFINITE : (DWORD)timeout_ms;
    if (cancel != 0) hs[n++] = (HANDLE)(INT_PTR)cancel;
    hs[n++] = (HANDLE)(INT_PTR)sem;
    r = WaitForMultipleObjects(n, hs, FALSE, ms);
    if (r == WAIT_TIMEOUT) return FJ_SEM_TIMEOUT;
    if (r == WAIT_FAILED) return fj_win_fail();
    if (r - WAIT_OBJECT_0 < n) { /* WAIT_OBJECT_0 is 0 */
        if (cancel != 0 && r == WAIT_OBJECT_0) return FJ_SEM_CANCELLED;
        return FJ_SEM_ACQUIRED;
    }
    /* WAIT_ABANDONED_* is for mutexes only; treat anything else as an error. */
    SetLastError(ERROR_INVALID_HANDLE);
    return fj_win_fail();
}

/* Give one token back.  EOVERFLOW when that would exceed the maximum count
 * (more releases than acquires). */
static FJ_INLINE int fj_sem_release(fj_handle_t sem) {
    if (!ReleaseSemaphore((HANDLE)(INT_PTR)sem, 1, NULL)) return fj_win_fail();
    return 0;
}

/* The current count of a semaphore without taking any: NtQuerySemaphore
 * (ntdll; neither <windows.h> nor the SDK import libraries declare it, so it
 * is looked up at run time).  Returns the count, or -1 (EACCES without
 * SEMAPHORE_QUERY_STATE access, ENOSYS if ntdll lacks it). */
typedef struct { LONG CurrentCount; LONG MaximumCount; } fj_sem_basic_info_t;
typedef LONG (WINAPI *fj_nt_query_semaphore_t)(HANDLE, int, void *, ULONG, ULONG *);
typedef ULONG (WINAPI *fj_nt_status_to_dos_t)(LONG);

static FJ_INLINE int fj_sem_count(fj_handle_t sem) {
    /* Racing first calls store the same addresses: no lock needed. */
    static fj_nt_query_semaphore_t query = NULL;
    static fj_nt_status_to_dos_t to_dos = NULL;
    fj_sem_basic_info_t info;
    LONG status;
    if (query == NULL) {
        HMODULE nt = GetModuleHandleA("ntdll.dll");
        /* Through void (*)(void): the generic function pointer type, so that
         * no compiler warns about the cast from FARPROC. */
        if (nt != NULL) {
            to_dos = (fj_nt_status_to_dos_t)(void (*)(void))GetProcAddress(nt, "RtlNtStatusToDosError");
            query = (fj_nt_query_semaphore_t)(void (*)(void))GetProcAddress(nt, "NtQuerySemaphore");
        }
        if (query == NULL) {
            fj_win_error_ = ERROR_PROC_NOT_FOUND;
            errno = ENOSYS;
            return -1;
        }
    }
    status = query((HANDLE)(INT_PTR)sem, 0 /* SemaphoreBasicInformation */, &info,
                   (ULONG)sizeof info, NULL);
    if (status != 0) { /* an NTSTATUS error */
        SetLastError(to_dos != NULL ? to_dos(status) : ERROR_INVALID_HANDLE);
        return fj_win_fail();
    }
    return (int)info.CurrentCount;
}

/* An auto-reset event, unsignalled: the cancel handle of fj_sem_wait. */
static FJ_INLINE int fj_event_create(fj_handle_t *out) {
    HANDLE h = CreateEventA(NULL, FALSE, FALSE, NULL);
    *out = 0;
    if (h == NULL) return fj_win_fail();
    *out = (fj_handle_t)(INT_PTR)h;
    return 0;
}

static FJ_INLINE int fj_event_set(fj_handle_t ev) {
    if (!SetEvent((HANDLE)(INT_PTR)ev)) return fj_win_fail();
    return 0;
}

static FJ_INLINE int fj_handle_close(fj_handle_t h) {
    if (!CloseHandle((HANDLE)(INT_PTR)h)) return fj_win_fail();
    return 0;
}

/* ---- POSIX calls of fastjob_io.h: no meaning on Windows (ENOSYS) ---- */
typedef struct {
    long long mode;
    long long dev;
    long long ino;
    long long uid;
    int fl_flags;
    int fd_flags;
} fj_fd_info_t;

static FJ_INLINE int fj_enosys_(void) { errno = ENOSYS; return -1; }
static FJ_INLINE int fj_try_read(int fd) { (void)fd; return fj_enosys_(); }
static FJ_INLINE int fj_read_blocking(int fd) { (void)fd; return fj_enosys_(); }
static FJ_INLINE int fj_read_nowait(int fd) { (void)fd; return fj_enosys_(); }
static FJ_INLINE int fj_write(int fd, int byte) { (void)fd; (void)byte; return fj_enosys_(); }
static FJ_INLINE int fj_wait_readable(int fd, int cancel_fd, int timeout_ms) {
    (void)fd; (void)cancel_fd; (void)timeout_ms; return fj_enosys_();
}
static FJ_INLINE int fj_wait_pool(int ep, int pool_fd, int timeout_ms) {
    (void)ep; (void)pool_fd; (void)timeout_ms; return fj_enosys_();
}
static FJ_INLINE int fj_available(int fd) { (void)fd; return fj_enosys_(); }
static FJ_INLINE int fj_fill(int fd, int byte, int n) { (void)fd; (void)byte; (void)n; return fj_enosys_(); }
static FJ_INLINE int fj_drain(int fd, unsigned char *buf, int cap) {
    (void)fd; (void)buf; (void)cap; return fj_enosys_();
}
static FJ_INLINE int fj_reopen_private(int fd, int flags) { (void)fd; (void)flags; return fj_enosys_(); }
static FJ_INLINE int fj_fd_info(int fd, fj_fd_info_t *info) { (void)fd; (void)info; return fj_enosys_(); }

#else /* !_WIN32: the semaphore calls exist but fail with ENOSYS */

static FJ_INLINE unsigned long fj_win_last_error(void) { return 0; }
static FJ_INLINE int fj_sem_enosys_(fj_handle_t *out) {
    if (out) *out = 0;
    errno = ENOSYS;
    return -1;
}
static FJ_INLINE int fj_sem_create(const char *name, int count, int max_count, fj_handle_t *out) {
    (void)name; (void)count; (void)max_count; return fj_sem_enosys_(out);
}
static FJ_INLINE int fj_sem_open(const char *name, fj_handle_t *out) { (void)name; return fj_sem_enosys_(out); }
static FJ_INLINE int fj_sem_try(fj_handle_t sem) { (void)sem; return fj_sem_enosys_(0); }
static FJ_INLINE int fj_sem_wait(fj_handle_t sem, fj_handle_t cancel, int timeout_ms) {
    (void)sem; (void)cancel; (void)timeout_ms; return fj_sem_enosys_(0);
}
static FJ_INLINE int fj_sem_release(fj_handle_t sem) { (void)sem; return fj_sem_enosys_(0); }
static FJ_INLINE int fj_sem_count(fj_handle_t sem) { (void)sem; return fj_sem_enosys_(0); }
static FJ_INLINE int fj_event_create(fj_handle_t *out) { return fj_sem_enosys_(out); }
static FJ_INLINE int fj_event_set(fj_handle_t ev) { (void)ev; return fj_sem_enosys_(0); }
static FJ_INLINE int fj_handle_close(fj_handle_t h) { (void)h; return fj_sem_enosys_(0); }

#endif /* _WIN32 */
#endif /* FASTJOB_IO_WIN_H */
