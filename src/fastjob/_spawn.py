"""Starting, awaiting and stopping the children of run_process / open_process.

Linux (a pidfd and posix_spawn): the child is started with ``posix_spawn``
(a vfork-style clone, no fork of the address space), in its own process
group, and awaited through a pidfd registered with the running event loop:
no helper thread, no child watcher.  Captured output goes to anonymous memory
files (``memfd``), so the only wait per child is its pidfd; ``open_process``
streams are pipes, created only for the streams asked for.  A request
posix_spawn cannot express (``cwd``, ``user``, ``group``, ``extra_groups``,
``umask``) is started with :class:`subprocess.Popen` (vfork too) and
awaited the same way.

Elsewhere (macOS, Windows, kernels without pidfd) the child is started with
:func:`anyio.open_process`, in a new session so that it has a process group
of its own.

Stopping (cancellation, timeout, an exception in an ``open_process`` block):
the child's process group gets SIGTERM, then SIGKILL after
:data:`TERM_GRACE` seconds, the child is reaped, and only when no process of
the group is left running does the caller release its token.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

import anyio
import anyio.abc
import anyio.lowlevel

from . import _backend

__all__ = [
    "TERM_GRACE",
    "Child",
    "CompletedError",
    "PortableChild",
    "SpawnedProcess",
    "fast_path",
    "open_child",
    "run_child",
    "stop_group",
]

#: Seconds between SIGTERM and SIGKILL when a child is stopped on cancel.
TERM_GRACE = 0.5
#: How long, at most, to wait for a SIGKILLed group to disappear.
KILL_WAIT = 5.0
#: Lines and characters of captured stderr quoted in a CalledProcessError.
TAIL_LINES = 20
TAIL_CHARS = 4000

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT

Stdio = int | IO[Any] | None


# -- which path ------------------------------------------------------------------
_fast: bool | None = None


def fast_path() -> bool:
    """True where children are started with posix_spawn and awaited through a
    pidfd: Linux with pidfd_open (5.3+) and memfd_create.  The environment
    variable ``FASTJOB_SPAWN=portable`` forces the anyio path (read once)."""
    global _fast
    if _fast is None:
        _fast = _probe()
    return _fast


def _probe() -> bool:
    if os.environ.get("FASTJOB_SPAWN", "") == "portable":
        return False
    if not (sys.platform.startswith("linux") and hasattr(os, "pidfd_open")
            and hasattr(os, "posix_spawn") and hasattr(os, "memfd_create")):  # fmt: skip
        return False
    # glibc clears FD_CLOEXEC on a dup2(fd, fd) file action from 2.29 on;
    # pass_fds rely on it (musl does the same).
    libc = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else None
    if libc and libc.startswith("glibc "):
        major, _, minor = libc[6:].partition(".")
        if (int(major), int(minor.split(".")[0] or 0)) < (2, 29):
            return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False  # ENOSYS: a kernel older than 5.3
    return True


# -- waiting on an fd from any backend --------------------------------------------
async def wait_readable(fd: int) -> None:
    """Wait until ``fd`` is readable on the running loop (asyncio, uvloop or
    trio): one registration, removed when done or cancelled."""
    if _backend.is_trio():
        import trio

        await trio.lowlevel.wait_readable(fd)
        return
    import asyncio

    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        loop.remove_reader(fd)
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


# -- the pidfds of running children, per asyncio loop -------------------------------
class Reaper:
    """One epoll set per asyncio (or uvloop) event loop holding the pidfds of
    the children being waited for, each registered ``EPOLLONESHOT``; the set's
    own fd is registered with the loop once.  Watching a child is one
    ``epoll_ctl`` and one dict entry (no selector bookkeeping per child, no
    task): when the child exits, the loop calls :meth:`_ready`, which runs the
    child's callback (or completes its future).  A pidfd that fired is
    disarmed (one shot) and leaves the set when it is closed."""

    __slots__ = ("_loop", "_ep", "_pid", "_waiting", "__weakref__")

    def __init__(self, loop: Any) -> None:
        import select
        import weakref

        self._loop = weakref.ref(loop)  # not strong: the loop is the key of _reapers
        self._ep = select.epoll()
        self._pid = os.getpid()
        self._waiting: dict[int, Any] = {}
        loop.add_reader(self._ep.fileno(), self._ready)

    def watch(self, pidfd: int, then: Any) -> None:
        """Call ``then()`` (a callable) or complete ``then`` (an
        asyncio.Future) from the loop once ``pidfd``'s process has exited."""
        self._ep.register(pidfd, _EPOLL_ONCE)
        self._waiting[pidfd] = then

    def forget(self, pidfd: int) -> None:
        """Stop watching ``pidfd`` (before it is closed; no-op if it fired)."""
        if self._waiting.pop(pidfd, None) is not None:
            try:
                self._ep.unregister(pidfd)
            except (OSError, ValueError):
                pass

    def __len__(self) -> int:
        return len(self._waiting)

    def _ready(self) -> None:
        try:
            events = self._ep.poll(0)
        except InterruptedError:
            return
        waiting = self._waiting
        for fd, _ in events:
            then = waiting.pop(fd, None)
            if then is None:
                continue
            if isinstance(then, _Future):
                if not then.done():
                    then.set_result(None)
                continue
            try:
                then()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # one callback's error must not lose the others
                loop = self._loop()
                if loop is None:
                    raise
                loop.call_exception_handler(
                    {"message": "fastjob: exception in a child-exit callback", "exception": exc}
                )

    def close(self) -> None:
        """Unregister from the loop and close the epoll set (the loop's end)."""
        if not self._ep.closed:
            loop = self._loop()
            try:
                if loop is not None:
                    loop.remove_reader(self._ep.fileno())
            except Exception:
                pass  # the loop is closed already
            self._ep.close()


_EPOLL_ONCE = 0
_Future: Any = None
_get_running_loop: Any = None


def _loop_getter() -> Any:
    """asyncio's running-loop getter (None under trio), looked up once."""
    global _get_running_loop
    aio = sys.modules.get("asyncio")
    if aio is None:
        return lambda: None  # asyncio never imported: this is trio
    _get_running_loop = aio._get_running_loop
    return _get_running_loop
_reapers: Any = None  # WeakKeyDictionary[loop, Reaper]


def reaper(loop: Any) -> Reaper:
    """The :class:`Reaper` of an asyncio loop (made on first use; a forked
    child makes its own)."""
    global _reapers, _EPOLL_ONCE, _Future
    if _reapers is None:
        import asyncio
        import select
        import weakref

        _EPOLL_ONCE = select.EPOLLIN | select.EPOLLONESHOT
        _Future = asyncio.Future
        _reapers = weakref.WeakKeyDictionary()
    r: Reaper | None = _reapers.get(loop)
    if r is None or r._pid != os.getpid():
        r = _reapers[loop] = Reaper(loop)
        import weakref

        weakref.finalize(loop, r._ep.close)
    return r


async def wait_writable(fd: int) -> None:
    """Wait until ``fd`` is writable (as :func:`wait_readable`)."""
    if _backend.is_trio():
        import trio

        await trio.lowlevel.wait_writable(fd)
        return
    import asyncio

    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        loop.remove_writer(fd)
        if not fut.done():
            fut.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await fut
    finally:
        loop.remove_writer(fd)


# -- the process group ------------------------------------------------------------
def _group_running(pgid: int) -> bool:
    """True while a process of group ``pgid`` is still running (a zombie does
    not count: it runs nothing and only waits for its parent to reap it)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member changed its uid: it is there
    try:
        names = os.listdir("/proc")
    except OSError:
        return True  # no /proc (macOS): the group exists, count it as running
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


async def stop_group(pgid: int, leader_exited: Any, reap: Any) -> None:
    """Stop process group ``pgid`` whose leader is our child: SIGTERM to the
    group, SIGKILL after :data:`TERM_GRACE`, reap the leader, then wait until
    no member runs.  ``leader_exited()`` is an awaitable that returns when the
    leader has exited; ``reap()`` reaps it.  Runs shielded: the caller
    releases its token only after this returns."""
    with anyio.CancelScope(shield=True):
        _killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE
        with anyio.move_on_after(TERM_GRACE):
            await leader_exited()
        # The leader may be gone while others of its group still run.
        while _group_running(pgid) and time.monotonic() < deadline:
            await anyio.sleep(0.01)
        _killpg(pgid, signal.SIGKILL)
        await leader_exited()
        reap()
        deadline = time.monotonic() + KILL_WAIT
        while _group_running(pgid) and time.monotonic() < deadline:
            await anyio.sleep(0.005)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- closing inherited fds (subprocess's close_fds=True) ----------------------------
_inherited: tuple[int, tuple[int, ...]] | None = None


def _inheritable_fds() -> tuple[int, ...]:
    """fds above 2 that this process got inheritable (from its parent: make's
    pool fds in a ``+`` recipe, say), found once per process; the child must
    not get them unless they are in pass_fds, as with subprocess."""
    global _inherited
    pid = os.getpid()
    if _inherited is None or _inherited[0] != pid:
        found: list[int] = []
        try:
            names = os.listdir("/proc/self/fd")
        except OSError:
            names = []
        for name in names:
            fd = int(name)
            try:
                if fd > 2 and os.get_inheritable(fd):
                    found.append(fd)
            except OSError:
                continue  # the listing's own fd, closed by now
        _inherited = (pid, tuple(found))
    return _inherited[1]


def _fd_of(spec: Stdio) -> int:
    if isinstance(spec, int):
        return spec
    assert spec is not None
    return spec.fileno()


# -- starting a child (fast path) ----------------------------------------------------
def _argv(command: Any) -> list[Any]:
    if isinstance(command, (str, bytes)):
        return ["/bin/sh", "-c", command]
    argv = list(command)
    if not argv:
        raise ValueError("the command is empty: give at least the program to run")
    return argv


_environ_data: dict[bytes, bytes] | None = getattr(os.environ, "_data", None)


def _resolve(program: Any, env: Mapping[Any, Any]) -> tuple[Any, bool]:
    """(path, search): posix_spawnp searches this process's PATH, so a child
    env with another PATH is searched here, as subprocess does."""
    if type(program) is str:
        if "/" in program:
            return program, False
        name = program
    else:
        name = os.fsdecode(program)
        if "/" in name:
            return program, False
    path = env.get(b"PATH") if _bytes_env(env) else env.get("PATH")
    if path is None:
        return program, True
    ours = _environ_data.get(b"PATH") if _environ_data is not None else os.environb.get(b"PATH")
    if (path if type(path) is bytes else os.fsencode(path)) == ours:
        return program, True
    for d in os.get_exec_path({"PATH": os.fsdecode(path)}):
        cand = os.path.join(d, name)
        if os.access(cand, os.X_OK) and not os.path.isdir(cand):
            return cand, False
    raise FileNotFoundError(2, "No such file or directory", name)


def _bytes_env(env: Mapping[Any, Any]) -> bool:
    for key in env:
        return isinstance(key, bytes)
    return False


class Child:
    """A child started by :func:`spawn`: its pid, its pidfd, its group.

    It is reaped only by :meth:`reap`: until then the zombie keeps its pid,
    and so its process group id, from being reused, which makes signalling
    the group safe even after the child has exited."""

    __slots__ = ("pid", "pgid", "pidfd", "returncode", "reaped", "_popen")

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.pgid = pid  # its own group (or session): the leader's pid
        self._popen = popen
        self.returncode: int | None = None
        self.reaped = False
        try:
            self.pidfd = os.pidfd_open(pid)
        except BaseException:
            _killpg(self.pgid, signal.SIGKILL)
            self.pidfd = -1
            self.reap()
            raise

    def poll(self) -> int | None:
        """The exit status once the child has exited (without reaping it)."""
        if self.returncode is None and self.pidfd >= 0:
            info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            if info is not None and info.si_pid:
                code = info.si_status
                self.returncode = code if info.si_code == os.CLD_EXITED else -code
        return self.returncode

    def reap(self) -> int:
        """Reap the child (blocking: call once it has exited)."""
        if not self.reaped:
            if self._popen is not None:
                self.returncode = self._popen.wait()
            else:
                self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            self.reaped = True
            if self.pidfd >= 0:
                fd, self.pidfd = self.pidfd, -1
                _forget_fd(fd)
                os.close(fd)
        assert self.returncode is not None
        return self.returncode

    async def exited(self) -> None:
        """Return once the child has exited (it is not reaped)."""
        if self.pidfd >= 0 and self.poll() is None:
            await self._exit()

    async def _exit(self) -> None:
        """Wait for the pidfd: on asyncio through the loop's :class:`Reaper`
        (a future, no selector registration of its own), on trio directly."""
        pidfd = self.pidfd
        get = _get_running_loop or _loop_getter()
        loop = get()
        if loop is None:  # trio
            import trio

            await trio.lowlevel.wait_readable(pidfd)
            return
        fut = loop.create_future()
        r = reaper(loop)
        r.watch(pidfd, fut)
        try:
            await fut
        except BaseException:
            r.forget(pidfd)
            raise

    async def wait(self, reap: bool = True) -> int:
        """Wait for the child to exit (and reap it); cancelling this stops its
        whole group first (see :func:`stop_group`)."""
        if self.returncode is not None:
            await anyio.lowlevel.checkpoint()
        else:
            try:
                await self._exit()
            except BaseException:
                await self.stop()
                raise
        if reap:
            return self.reap()
        code = self.poll()
        assert code is not None
        return code

    async def stop(self) -> None:
        """SIGTERM the group, SIGKILL after the grace, reap, wait for the group."""
        if self.reaped:
            return  # its pgid may belong to someone else by now
        await stop_group(self.pgid, self.exited, self.reap)

    def send_signal(self, sig: int) -> None:
        """Signal the child itself (not its group); nothing once it has exited."""
        if self.poll() is None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass


def _forget_fd(fd: int) -> None:
    """Tell trio (when this runs in a trio task) that an fd it may have
    waited on is about to be closed."""
    if _backend.is_trio():
        try:
            import trio

            trio.lowlevel.notify_closing(fd)
        except (ImportError, RuntimeError):
            pass  # not inside trio after all: no loop holds the fd


def spawn(
    command: Any,
    env: Mapping[Any, Any],
    *,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
    pass_fds: Sequence[int],
    close_fds: Iterable[int],
    start_new_session: bool,
    cwd: Any,
    popen_kwargs: Mapping[str, Any],
) -> Child:
    """Start ``command`` in a process group of its own (its own session with
    ``start_new_session``).  ``stdin``/``stdout``/``stderr``: None (inherit),
    DEVNULL, an fd or a file object (STDOUT for stderr); PIPE is resolved by
    the caller.  ``close_fds``: fds the child must not get."""
    argv = _argv(command)
    if cwd is not None or (popen_kwargs and any(v is not None and v != -1 for v in popen_kwargs.values())):
        return _spawn_popen(argv, env, stdin, stdout, stderr, pass_fds, start_new_session, cwd, popen_kwargs)
    actions: list[tuple[Any, ...]] = []
    for target, spec in ((0, stdin), (1, stdout), (2, stderr)):
        if spec is None:
            continue
        if spec == DEVNULL:
            actions.append((os.POSIX_SPAWN_OPEN, target, os.devnull, os.O_RDWR, 0))
        elif target == 2 and spec == STDOUT:
            actions.append((os.POSIX_SPAWN_DUP2, 1, 2))
        else:
            actions.append((os.POSIX_SPAWN_DUP2, _fd_of(spec), target))
    keep = set(pass_fds)
    for fd in close_fds:
        if fd not in keep:
            actions.append((os.POSIX_SPAWN_CLOSE, fd))
    for fd in keep:
        if fd > 2:
            actions.append((os.POSIX_SPAWN_DUP2, fd, fd))  # clears FD_CLOEXEC in the child
    path, search = _resolve(argv[0], env)
    spawner = os.posix_spawnp if search else os.posix_spawn
    # Python ignores SIGPIPE and SIGXFSZ; the child gets the default back, as
    # subprocess's restore_signals does.
    sigdef = (signal.SIGPIPE, signal.SIGXFSZ)
    if start_new_session:
        pid = spawner(path, argv, env, file_actions=actions, setsid=True, setsigdef=sigdef)
    else:
        pid = spawner(path, argv, env, file_actions=actions, setpgroup=0, setsigdef=sigdef)
    return Child(pid)


def _spawn_popen(
    argv: list[Any],
    env: Mapping[Any, Any],
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
    pass_fds: Sequence[int],
    start_new_session: bool,
    cwd: Any,
    popen_kwargs: Mapping[str, Any],
) -> Child:
    kw: dict[str, Any] = {k: v for k, v in popen_kwargs.items() if v is not None and v != -1}
    if start_new_session:
        kw["start_new_session"] = True
    elif sys.version_info >= (3, 11):
        kw["process_group"] = 0
    else:
        kw["start_new_session"] = True  # Python 3.10 has no process_group
    popen = subprocess.Popen(
        argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
        pass_fds=tuple(pass_fds), close_fds=True, **kw,
    )  # fmt: skip
    return Child(popen.pid, popen)


# -- memory files for captured output -------------------------------------------------
def _memfd(name: str) -> int:
    return os.memfd_create(name, os.MFD_CLOEXEC)


def _read_all(fd: int) -> bytes:
    size = os.lseek(fd, 0, os.SEEK_END)
    if not size:
        return b""
    chunks = []
    pos = 0
    while pos < size:
        data = os.pread(fd, size - pos, pos)
        if not data:
            break
        chunks.append(data)
        pos += len(data)
    return b"".join(chunks)


# -- run_process ------------------------------------------------------------------
class CompletedError(subprocess.CalledProcessError):
    """CalledProcessError whose message ends with the tail of the captured
    stderr (a failing compiler's message is not lost)."""

    def __str__(self) -> str:
        text = super().__str__()
        err = self.stderr
        if not err:
            return text
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
        lines = err.rstrip("\n").splitlines()[-TAIL_LINES:]
        tail = "\n".join(lines)[-TAIL_CHARS:]
        return f"{text} stderr (last {len(lines)} line{'s' if len(lines) != 1 else ''}):\n{tail}"


def check_returncode(command: Any, rc: int, out: bytes | None, err: bytes | None) -> None:
    """Raise :class:`CompletedError` for a non-zero ``rc``."""
    if rc:
        raise CompletedError(rc, command, out, err)


async def run_child(
    command: Any,
    env: Mapping[Any, Any],
    *,
    input: bytes | None,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
    check: bool,
    cwd: Any,
    pass_fds: Sequence[int],
    close_fds: Iterable[int],
    start_new_session: bool,
    popen_kwargs: Mapping[str, Any],
) -> subprocess.CompletedProcess[bytes]:
    """The fast path of run_process: spawn, wait on the pidfd, collect."""
    if input is not None and stdin is not None:
        raise ValueError("give either input or stdin, not both")
    own: list[int] = []
    try:
        if input is not None:
            fd = _memfd("fastjob-stdin")
            own.append(fd)
            view = memoryview(input)
            while view:
                view = view[os.write(fd, view) :]
            os.lseek(fd, 0, os.SEEK_SET)
            stdin = fd
        out_fd = err_fd = -1
        if stdout == PIPE:
            out_fd = stdout = _memfd("fastjob-stdout")
            own.append(out_fd)
        if stderr == PIPE:
            err_fd = stderr = _memfd("fastjob-stderr")
            own.append(err_fd)
        child = spawn(
            command, env, stdin=stdin, stdout=stdout, stderr=stderr, pass_fds=pass_fds,
            close_fds=close_fds, start_new_session=start_new_session, cwd=cwd,
            popen_kwargs=popen_kwargs,
        )  # fmt: skip
        rc = await child.wait()
        out = _read_all(out_fd) if out_fd >= 0 else None
        err = _read_all(err_fd) if err_fd >= 0 else None
    finally:
        for fd in own:
            os.close(fd)
    if check:
        check_returncode(command, rc, out, err)
    return subprocess.CompletedProcess(command, rc, out, err)


# -- open_process -------------------------------------------------------------------
class _FdStream:
    """A non-blocking pipe end this process owns."""

    def __init__(self, fd: int) -> None:
        self._fd = fd  # made non-blocking before the child was started

    def _check(self) -> int:
        if self._fd < 0:
            raise anyio.ClosedResourceError
        return self._fd

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            _forget_fd(fd)
            os.close(fd)


class PipeReceiveStream(_FdStream, anyio.abc.ByteReceiveStream):
    """The read end of a child's stdout or stderr pipe."""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        while True:
            try:
                data = os.read(self._check(), max_bytes)
            except BlockingIOError:
                await wait_readable(self._fd)
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    async def aclose(self) -> None:
        self._close()
        await anyio.lowlevel.checkpoint()


class PipeSendStream(_FdStream, anyio.abc.ByteSendStream):
    """The write end of a child's stdin pipe."""

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        view = memoryview(item)
        while view:
            try:
                n = os.write(self._check(), view)
            except BlockingIOError:
                await wait_writable(self._fd)
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise anyio.BrokenResourceError from exc
            view = view[n:]

    async def aclose(self) -> None:
        self._close()
        await anyio.lowlevel.checkpoint()


class SpawnedProcess(anyio.abc.Process):
    """The child of an ``open_process`` on the fast path: the anyio Process
    interface (pid, returncode, wait, signals, stdin/stdout/stderr streams)."""

    def __init__(
        self,
        child: Child,
        stdin: PipeSendStream | None,
        stdout: PipeReceiveStream | None,
        stderr: PipeReceiveStream | None,
    ) -> None:
        self._child = child
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr

    @property
    def pid(self) -> int:
        return self._child.pid

    @property
    def returncode(self) -> int | None:
        return self._child.poll()

    @property
    def stdin(self) -> anyio.abc.ByteSendStream | None:
        return self._stdin

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream | None:
        return self._stdout

    @property
    def stderr(self) -> anyio.abc.ByteReceiveStream | None:
        return self._stderr

    async def wait(self) -> int:
        # Not reaped until the open_process block ends: the zombie keeps the
        # group id reserved for a later stop.
        return await self._child.wait(reap=False)

    def send_signal(self, signal: int) -> None:
        self._child.send_signal(signal)

    def terminate(self) -> None:
        self._child.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self._child.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        """Stop the child's whole group (see :func:`stop_group`) and reap it."""
        await self._child.stop()

    def close_streams(self) -> None:
        for s in (self._stdin, self._stdout, self._stderr):
            if s is not None:
                s._close()

    async def aclose(self) -> None:
        """Close the streams, wait for the child (stopping its group if this
        is cancelled) and reap it."""
        self.close_streams()
        await self._child.wait()


def open_child(
    command: Any,
    env: Mapping[Any, Any],
    *,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
    cwd: Any,
    pass_fds: Sequence[int],
    close_fds: Iterable[int],
    start_new_session: bool,
    popen_kwargs: Mapping[str, Any],
) -> SpawnedProcess:
    """The fast path of open_process: pipes for the PIPE streams only."""
    parent: list[int] = []  # our ends
    child_ends: list[int] = []
    try:
        ends: list[Stdio] = []
        for i, spec in enumerate((stdin, stdout, stderr)):
            if spec == PIPE:
                r, w = os.pipe()
                os.set_blocking(w if i == 0 else r, False)  # our end only
                parent.append(w if i == 0 else r)
                child_ends.append(r if i == 0 else w)
                ends.append(r if i == 0 else w)
            else:
                parent.append(-1)
                ends.append(spec)
        child = spawn(
            command, env, stdin=ends[0], stdout=ends[1], stderr=ends[2], pass_fds=pass_fds,
            close_fds=close_fds, start_new_session=start_new_session, cwd=cwd,
            popen_kwargs=popen_kwargs,
        )  # fmt: skip
    except BaseException:
        for fd in parent:
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        for fd in child_ends:
            os.close(fd)
    return SpawnedProcess(
        child,
        PipeSendStream(parent[0]) if parent[0] >= 0 else None,
        PipeReceiveStream(parent[1]) if parent[1] >= 0 else None,
        PipeReceiveStream(parent[2]) if parent[2] >= 0 else None,
    )


# -- the portable path (anyio) ---------------------------------------------------------
class PortableChild:
    """Stopping an anyio Process: its group where there are groups (it was
    started in a session of its own), else the process alone."""

    @staticmethod
    async def stop(process: anyio.abc.Process) -> None:
        with anyio.CancelScope(shield=True):
            if not hasattr(os, "killpg"):  # Windows: no process groups
                if process.returncode is None:
                    process.terminate()
                    with anyio.move_on_after(TERM_GRACE):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                await process.wait()
                return

            async def exited() -> None:
                await process.wait()

            await stop_group(process.pid, exited, lambda: None)
