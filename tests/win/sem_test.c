/*
 * sem_test.c - exercises the Windows semaphore calls of src/fastjob_io.h
 * (fastjob_io_win.h): create, open by name, try, wait with timeout, wait
 * woken by a release from another thread, wait cancelled by an event,
 * release above the maximum, a taken name, a missing name, counting
 * (NtQuerySemaphore) from the creating and from an opened handle.
 *
 * Built by tests/test_windows_sem.py with x86_64-w64-mingw32-gcc and run
 * under wine when it is there (or natively on Windows).  Prints one line per
 * check and exits 0 only when every check passed.
 */
#include <stdio.h>
#include <string.h>
#include <process.h>
#include "fastjob_io.h"

static int failures = 0;

#define CHECK(cond, what)                                                       \
    do {                                                                        \
        if (cond) {                                                             \
            printf("ok   %s\n", what);                                          \
        } else {                                                                \
            printf("FAIL %s (line %d, errno %d, winerror %lu)\n", what, __LINE__, \
                   errno, fj_win_last_error());                                 \
            failures++;                                                         \
        }                                                                       \
    } while (0)

typedef struct {
    fj_handle_t handle;
    HANDLE ready;   /* set by the helper thread just before it acts */
    int delay_ms;
    int result;
} helper_t;

static unsigned __stdcall release_later(void *arg) {
    helper_t *h = (helper_t *)arg;
    SetEvent(h->ready);
    Sleep((DWORD)h->delay_ms);
    h->result = fj_sem_release(h->handle);
    return 0;
}

static unsigned __stdcall cancel_later(void *arg) {
    helper_t *h = (helper_t *)arg;
    SetEvent(h->ready);
    Sleep((DWORD)h->delay_ms);
    h->result = fj_event_set(h->handle);
    return 0;
}

static HANDLE start(unsigned(__stdcall *fn)(void *), helper_t *h) {
    HANDLE t;
    h->ready = CreateEventA(NULL, TRUE, FALSE, NULL);
    t = (HANDLE)_beginthreadex(NULL, 0, fn, h, 0, NULL);
    WaitForSingleObject(h->ready, INFINITE);
    return t;
}

static void finish(HANDLE t, helper_t *h) {
    WaitForSingleObject(t, 10000);
    CloseHandle(t);
    CloseHandle(h->ready);
}

int main(void) {
    char name[64];
    fj_handle_t sem = 0, client = 0, other = 0, cancel = 0;
    int r;
    DWORD t0, elapsed;
    helper_t h;

    snprintf(name, sizeof name, "fastjob_test_semaphore_%lu", (unsigned long)GetCurrentProcessId());

    /* A pool of 2 tokens, as make -j3 makes. */
    r = fj_sem_create(name, 2, 2, &sem);
    CHECK(r == 0 && sem != 0, "create a semaphore with 2 tokens");
    r = fj_sem_create(name, 2, 2, &other);
    CHECK(r == -1 && errno == EEXIST && other == 0, "creating a taken name fails with EEXIST");
    r = fj_sem_create("fastjob_test_bad", 3, 2, &other);
    CHECK(r == -1 && errno == EINVAL, "count above the maximum is EINVAL");

    r = fj_sem_open(name, &client);
    CHECK(r == 0 && client != 0, "open it by name (the client side)");
    r = fj_sem_open("fastjob_test_no_such_semaphore", &other);
    CHECK(r == -1 && errno == ENOENT, "opening a missing name fails with ENOENT");

    CHECK(fj_sem_count(sem) == 2, "count a full pool (creating handle)");
    CHECK(fj_sem_count(client) == 2, "count a full pool (opened handle)");

    /* try: two tokens, then none. */
    CHECK(fj_sem_try(client) == 1, "try takes token 1");
    CHECK(fj_sem_count(client) == 1, "the count drops with the token taken");
    CHECK(fj_sem_try(sem) == 1, "try takes token 2 (other handle, same pool)");
    CHECK(fj_sem_try(client) == FJ_AGAIN, "try with the pool empty returns FJ_AGAIN");
    CHECK(fj_sem_count(sem) == 0, "count an empty pool");

    /* wait with a timeout and nothing free. */
    t0 = GetTickCount();
    r = fj_sem_wait(client, 0, 50);
    elapsed = GetTickCount() - t0;
    CHECK(r == FJ_SEM_TIMEOUT && elapsed >= 30, "wait with a 50 ms timeout times out");

    /* release, then try again. */
    CHECK(fj_sem_release(client) == 0, "release one token");
    CHECK(fj_sem_try(client) == 1, "try takes the released token");

    /* wait woken by a release from another thread. */
    h.handle = sem; h.delay_ms = 100; h.result = -99;
    {
        HANDLE t = start(release_later, &h);
        r = fj_sem_wait(client, 0, 10000);
        finish(t, &h);
    }
    CHECK(r == FJ_SEM_ACQUIRED && h.result == 0, "a blocked wait is woken by a release");

    /* wait cancelled by the event. */
    r = fj_event_create(&cancel);
    CHECK(r == 0 && cancel != 0, "create the cancel event");
    h.handle = cancel; h.delay_ms = 100; h.result = -99;
    {
        HANDLE t = start(cancel_later, &h);
        r = fj_sem_wait(client, cancel, 10000);
        finish(t, &h);
    }
    CHECK(r == FJ_SEM_CANCELLED && h.result == 0, "a blocked wait is cancelled by the event");
    CHECK(fj_sem_try(client) == FJ_AGAIN, "the cancelled wait took no token");
    /* Auto-reset: the event was consumed by the wait. */
    CHECK(fj_sem_wait(client, cancel, 0) == FJ_SEM_TIMEOUT, "the cancel event reset itself");

    /* cancel wins over a free token; no token taken. */
    CHECK(fj_sem_release(client) == 0, "release (pool: 1 token)");
    CHECK(fj_event_set(cancel) == 0, "set the cancel event");
    CHECK(fj_sem_wait(client, cancel, 0) == FJ_SEM_CANCELLED, "cancel wins over a free token");
    CHECK(fj_sem_wait(client, cancel, 0) == FJ_SEM_ACQUIRED, "then the free token is taken");

    /* give everything back; one more is an overflow. */
    CHECK(fj_sem_release(client) == 0, "release token 1");
    CHECK(fj_sem_release(sem) == 0, "release token 2");
    r = fj_sem_release(client);
    CHECK(r == -1 && errno == EOVERFLOW && fj_win_last_error() == ERROR_TOO_MANY_POSTS,
          "releasing above the maximum fails with EOVERFLOW");
    CHECK(fj_sem_count(client) == 2, "count after everything came back");

    /* The POSIX calls are ENOSYS on Windows. */
    CHECK(fj_try_read(0) == -1 && errno == ENOSYS, "fj_try_read is ENOSYS on Windows");

    r = fj_sem_count(cancel);
    CHECK(r == -1 && fj_win_last_error() != 0, "counting an event (not a semaphore) fails");

    CHECK(fj_handle_close(cancel) == 0, "close the event");
    CHECK(fj_handle_close(client) == 0, "close the client handle");
    CHECK(fj_handle_close(sem) == 0, "close the server handle");
    r = fj_sem_open(name, &other);
    CHECK(r == -1 && errno == ENOENT, "the semaphore is gone once every handle is closed");

    printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
