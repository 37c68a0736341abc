"""``fastjob parallel``: run many shell commands through the jobserver.

Each job waits for a token (the first one uses this process's implicit
slot), runs in its own process group with the pool in its environment, and
writes stdout and stderr into private temporary files; when it ends, its
output is copied out in one piece, so jobs never interleave.

On Linux a job is started with posix_spawn and awaited through a pidfd (no
child-watcher thread, no pipes to pump); elsewhere anyio.open_process is
used.  A command without shell syntax is exec'ed directly, as make does.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import anyio
from anyio.abc import TaskGroup

from .._governor import Limits
from .pool import Pool, open_pool, warn
from .._core.token import Token

#: GNU parallel caps its exit status here: more failures read as 101.
MAX_STATUS = 101

# Characters that need no shell; a command made only of them (and spaces)
# is split on spaces and exec'ed directly.
_PLAIN = re.compile(r"[A-Za-z0-9_./,:+@%=-]+( +[A-Za-z0-9_./,:+@%=-]+)*")
# Words that only a shell understands (keywords, builtins that change the
# shell or have no program of their own); like make, anything else plain is
# exec'ed without a shell.
_SHELL_WORDS = frozenset(
    """. : alias bg break case cd command continue do done elif else esac eval exec exit
    export fc fg fi for getopts hash if in jobs kill local read readonly return set shift
    then times trap type ulimit umask unalias unset until wait while""".split()
)


def argv_for(command: str) -> tuple[str, list[str]]:
    """(program, argv) to exec for one command line: direct when it is plain
    words naming a program, else /bin/sh -c."""
    if _PLAIN.fullmatch(command):
        words = command.split()
        if words[0] not in _SHELL_WORDS and "=" not in words[0]:
            return words[0], words
    return "/bin/sh", ["/bin/sh", "-c", command]


@dataclass
class JobRecord:
    """One finished job (for reports and traces); times are time.monotonic()."""

    index: int
    command: str
    start: float
    end: float
    status: int
    pid: int | None = None


@dataclass
class Spec:
    """What to run and how."""

    commands: list[str]
    tags: list[str]
    jobs: int | None = None
    keep_going: bool = False
    progress: bool = False
    tag: bool = False
    limits: Limits | None = None  # the governor's (cli.limits)
    #: hooks for samplers and reports (``--trace``/``--report``): ``on_start``
    #: once the pool is open, ``on_job`` as each job ends, ``on_stop`` before
    #: the pool is accounted for and closed
    on_start: list[Callable[[Pool], None]] = field(default_factory=list)
    on_job: list[Callable[[JobRecord], None]] = field(default_factory=list)
    on_stop: list[Callable[[Pool], None]] = field(default_factory=list)


def build_commands(
    template: Sequence[str], args: Sequence[str] | None, lines: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """(commands, tags).  ``template`` words joined with spaces, each
    argument shell-quoted into every ``{}``; without a template each line is
    a command.  ValueError for a template without ``{}``."""
    items = list(args) if args is not None else [ln for ln in (lines or []) if ln.strip()]
    if not template:
        if args is not None:
            raise ValueError("'::: ARGS' needs a COMMAND_TEMPLATE with {} to put them in")
        return items, items
    text = " ".join(template)
    if "{}" not in text:
        raise ValueError(
            f"the command template {text!r} has no {{}} to substitute each argument into"
        )
    return [text.replace("{}", shlex.quote(a)) for a in items], items


class _Outputs:
    """Reusable pairs of unlinked temporary files for job stdout/stderr."""

    def __init__(self) -> None:
        self._free: list[tuple[IO[bytes], IO[bytes]]] = []

    def take(self) -> tuple[IO[bytes], IO[bytes]]:
        if self._free:
            return self._free.pop()
        return tempfile.TemporaryFile(), tempfile.TemporaryFile()

    @staticmethod
    def collect(f: IO[bytes]) -> bytes:
        fd = f.fileno()
        size = os.lseek(fd, 0, os.SEEK_END)
        data = os.pread(fd, size, 0) if size else b""
        if size:
            os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        return data

    def give(self, pair: tuple[IO[bytes], IO[bytes]]) -> None:
        self._free.append(pair)

    def close(self) -> None:
        for a, b in self._free:
            a.close()
            b.close()
        self._free.clear()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Runner:
    """One ``fastjob parallel`` run."""

    def __init__(self, spec: Spec, pool: Pool) -> None:
        self.spec = spec
        self.pool = pool
        self.total = len(spec.commands)
        self.done = 0
        self.failed = 0
        self.running: dict[int, int] = {}  # pid -> process group
        self.stopping = False
        self.signalled = 0
        self.output_closed = False
        self.records: list[JobRecord] = []
        self._outputs = _Outputs()
        self._sched: anyio.CancelScope | None = None
        self._t0 = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False
        self._env = pool.env
        # FASTJOB_PARALLEL_SPAWN=anyio forces the portable path (for tests).
        self._fast = (
            hasattr(os, "pidfd_open")
            and hasattr(os, "posix_spawn")
            and os.environ.get("FASTJOB_PARALLEL_SPAWN", "") != "anyio"
        )
        # Jobs inherit what this process can pass on (as under make): the
        # pool's fds are made inheritable, nothing is closed.
        for fd in pool.pass_fds:
            os.set_inheritable(fd, True)
        self._pass_fds = pool.pass_fds if self._fast else _inheritable_fds()

    # -- scheduling -------------------------------------------------------------
    async def main(self) -> int:
        client = self.pool.client
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        try:
            with anyio.open_signal_receiver(*sigs) as receiver:
                async with anyio.create_task_group() as outer:
                    outer.start_soon(self._watch_signals, receiver)
                    if self.spec.progress:
                        outer.start_soon(self._ticker)
                    async with anyio.create_task_group() as jobs:
                        with anyio.CancelScope() as self._sched:
                            for i, cmd in enumerate(self.spec.commands):
                                if self.stopping:
                                    break
                                tok = await client.acquire()
                                if self.stopping:
                                    tok.release()
                                    break
                                self._launch(jobs, i, cmd, tok)
                    outer.cancel_scope.cancel()
        finally:
            self._outputs.close()
            self._clear_progress()
        if self.signalled:
            return 128 + self.signalled
        not_started = self.total - self.done
        if not_started and self.failed and not self.spec.keep_going:
            warn(
                f"stopped after a failure: {not_started} command"
                f"{'s' if not_started != 1 else ''} not started (--keep-going runs them all)"
            )
        return min(self.failed, MAX_STATUS)

    def _stop_scheduling(self) -> None:
        self.stopping = True
        if self._sched is not None:
            self._sched.cancel()

    async def _watch_signals(self, receiver: object) -> None:
        async for signum in receiver:  # type: ignore[attr-defined]
            first = not self.signalled
            self.signalled = self.signalled or int(signum)
            self._stop_scheduling()
            for pgid in list(self.running.values()):
                try:
                    os.killpg(pgid, int(signum) if first else signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    # -- one job ----------------------------------------------------------------
    def _launch(self, tg: TaskGroup, index: int, command: str, tok: Token) -> None:
        """Start one job holding ``tok``.  On the fast path the process is
        spawned right here (no extra event-loop turn before it starts)."""
        pair = self._outputs.take()
        start = time.monotonic()
        spawned: int | OSError | None = None
        if self._fast:
            try:
                spawned = self._spawn(command, pair)
            except OSError as exc:
                spawned = exc
        tg.start_soon(self._job, index, command, tok, pair, start, spawned)

    async def _job(
        self,
        index: int,
        command: str,
        tok: Token,
        pair: tuple[IO[bytes], IO[bytes]],
        start: float,
        spawned: int | OSError | None,
    ) -> None:
        pid: int | None = None
        try:
            try:
                if isinstance(spawned, OSError):
                    raise spawned
                if spawned is not None:
                    pid, status = spawned, await self._reap(spawned)
                else:
                    pid, status = await self._run_anyio(command, *pair)
            except OSError as exc:
                program = argv_for(command)[0]
                what = "command not found" if isinstance(exc, FileNotFoundError) else exc.strerror
                _write_all(pair[1].fileno(), f"fastjob: {program}: {what}\n".encode())
                status = 127 if isinstance(exc, FileNotFoundError) else 126
        finally:
            tok.release()
        end = time.monotonic()
        self._finish(index, command, status, pair)
        rec = JobRecord(index, command, start, end, status, pid)
        self.records.append(rec)
        for cb in self.spec.on_job:
            cb(rec)

    def _spawn(self, command: str, pair: tuple[IO[bytes], IO[bytes]]) -> int:
        """posix_spawn the command in its own process group, stdin from
        /dev/null, stdout/stderr into the job's files; returns the pid."""
        program, argv = argv_for(command)
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, pair[0].fileno(), 1),
            (os.POSIX_SPAWN_DUP2, pair[1].fileno(), 2),
        ]
        spawn = os.posix_spawn if program.startswith("/") else os.posix_spawnp
        pid = spawn(program, argv, self._env, file_actions=actions, setpgroup=0)
        self.running[pid] = pid
        return pid

    async def _reap(self, pid: int) -> int:
        """Wait (pidfd) for a spawned job and reap it; its exit status."""
        try:
            pidfd = os.pidfd_open(pid)
            try:
                await anyio.wait_readable(pidfd)
            finally:
                os.close(pidfd)
        except BaseException:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            os.waitpid(pid, 0)
            raise
        finally:
            self.running.pop(pid, None)
        _, wstatus = os.waitpid(pid, 0)
        return _status(os.waitstatus_to_exitcode(wstatus))

    async def _run_anyio(self, command: str, out: IO[bytes], err: IO[bytes]) -> tuple[int, int]:
        program, argv = argv_for(command)
        proc = await anyio.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out.fileno(),
            stderr=err.fileno(),
            env=self._env,
            pass_fds=self._pass_fds,
            start_new_session=True,
        )
        self.running[proc.pid] = proc.pid
        try:
            with anyio.CancelScope(shield=True):
                rc = await proc.wait()
        finally:
            self.running.pop(proc.pid, None)
            await proc.aclose()
        return proc.pid, _status(rc)

    def _finish(
        self, index: int, command: str, status: int, pair: tuple[IO[bytes], IO[bytes]]
    ) -> None:
        self.done += 1
        out = _Outputs.collect(pair[0])
        err = _Outputs.collect(pair[1])
        self._outputs.give(pair)
        if self.spec.tag:
            tag = self.spec.tags[index].encode()
            out = _tag_lines(tag, out)
            err = _tag_lines(tag, err)
        if status:
            self.failed += 1
            if not self.signalled:
                err += f"fastjob: exit status {status}: {command}\n".encode()
            if not self.spec.keep_going:
                self._stop_scheduling()
        if out or err:
            self._clear_progress()
            if not self.output_closed:
                try:
                    if out:
                        _write_all(1, out)
                    if err:
                        _write_all(2, err)
                except BrokenPipeError:
                    self.output_closed = True
                    self._stop_scheduling()
        if self.spec.progress:
            self._draw(force=self.done == self.total)

    # -- progress ---------------------------------------------------------------
    async def _ticker(self) -> None:
        while True:
            await anyio.sleep(0.5)
            self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        elapsed = now - self._t0
        left = self.total - self.done
        eta = "?"
        if self.done:
            eta = _clock(elapsed / self.done * left)
        line = (
            f"fastjob: {self.done}/{self.total} done, {len(self.running)} running, "
            f"{self.failed} failed, ETA {eta}"
        )
        width = shutil.get_terminal_size((80, 24)).columns - 1
        try:
            os.write(2, b"\r\x1b[K" + line[:width].encode())
            self._drawn = True
        except OSError:
            pass

    def _clear_progress(self) -> None:
        if self._drawn:
            self._drawn = False
            try:
                os.write(2, b"\r\x1b[K")
            except OSError:
                pass


def _inheritable_fds() -> tuple[int, ...]:
    """This process's fds above 2 that survive exec (what make would pass on)."""
    try:
        names = os.listdir("/dev/fd")
    except OSError:
        return ()
    fds = []
    for name in names:
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                fds.append(fd)
        except OSError:
            continue  # the listing's own fd, closed by now
    return tuple(fds)


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _tag_lines(tag: bytes, data: bytes) -> bytes:
    if not data:
        return data
    lines = data.splitlines(keepends=True)
    if not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"
    return b"".join(tag + b"\t" + ln for ln in lines)


def parallel(spec: Spec) -> int:
    """Run spec.commands in the inherited pool or a new one of spec.jobs;
    returns the number of failed commands (at most 101), 128+N on signal N."""
    if not spec.commands:
        return 0
    pool = open_pool(spec.jobs, limits=spec.limits)
    try:
        runner = Runner(spec, pool)
        for on_start in spec.on_start:
            on_start(pool)
        try:
            return anyio.run(runner.main, **_backend_options())
        finally:
            for on_stop in spec.on_stop:
                on_stop(pool)
    finally:
        pool.finish()


def _backend_options() -> dict[str, Any]:
    """The event loop: asyncio unless FASTJOB_PARALLEL_BACKEND says "trio"
    or "uvloop" (either must be installed)."""
    choice = os.environ.get("FASTJOB_PARALLEL_BACKEND", "")
    if choice == "trio":
        return {"backend": "trio"}
    if choice == "uvloop":
        return {"backend_options": {"use_uvloop": True}}
    return {}
