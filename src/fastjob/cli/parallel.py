"""``fastjob parallel``: run many shell commands through the jobserver.

The command line follows GNU parallel (input sources, replacement strings,
``-k``, ``--halt``, ``--joblog``, ``--timeout``, ``-n``); docs/cli.md lists
where it deliberately differs.

Scheduling costs one callback per job.  The scheduler takes the tokens
that are free with ``try_acquire``; one acquirer task waits for more only
when none is free.  When a job ends and another command is waiting, the
ended job's token goes straight to the next job (no release, no wake-up,
no wait registration).  On Linux under asyncio (and uvloop) a job is started
with posix_spawn and its end is one callback on a pidfd, which sits in the
loop's one epoll set for children (:class:`fastjob._spawn.Reaper`);
elsewhere (trio, or ``FASTJOB_PARALLEL_SPAWN=anyio``) each job is a task.

Each job runs in its own process group with the pool in its environment and
writes stdout and stderr into private temporary files; when it ends its
output is copied out in one piece, so jobs never interleave.  A command
without shell syntax is exec'ed directly, as make does.
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import partial
from dataclasses import dataclass, field
from typing import IO, Any

import anyio

from .._governor import Limits
from .._core.token import Token
from .pool import Pool, open_pool, warn

#: GNU parallel caps its exit status here: more failures read as 101.
MAX_STATUS = 101
#: A repeat of the first signal within this many seconds is the same event
#: delivered twice (to fastjob and to its process group: ``timeout -s INT``,
#: ``kill -INT -PGID``); only a signal arriving later escalates to SIGKILL.
DUPLICATE_WINDOW = 0.5
#: After SIGTERM (``--timeout``, ``--halt now``), SIGKILL follows this late,
#: about GNU parallel's default --termseq (TERM,200,TERM,100,TERM,50,KILL).
TERM_GRACE = 0.35

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
_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def argv_for(command: str) -> tuple[str, list[str]]:
    """(program, argv) to exec for one command line: direct when it is plain
    words naming a program, else /bin/sh -c."""
    if _PLAIN.fullmatch(command):
        words = command.split()
        if words[0] not in _SHELL_WORDS and "=" not in words[0]:
            return words[0], words
    return "/bin/sh", ["/bin/sh", "-c", command]


# -- input ----------------------------------------------------------------------
def split_records(data: bytes, null: bool, where: str) -> list[str]:
    """Input records: split on NUL with ``null``, else on ``\\n`` only (never
    on the other characters str.splitlines() breaks at, which may be inside
    a line).  A final separator ends the last record.  Decoded with the file
    system encoding and surrogateescape, so any bytes survive to the command.
    ValueError for a NUL byte in newline-separated input."""
    sep = b"\0" if null else b"\n"
    if not null and b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise ValueError(
            f"{where} contains a NUL byte (line {line}); for NUL-separated input "
            "(find -print0, xargs -0) give -0/--null"
        )
    if not data:
        return []
    parts = data.split(sep)
    if parts[-1] == b"":
        parts.pop()
    return [os.fsdecode(p) for p in parts]


@dataclass
class Source:
    """One input source: the values of a ``:::``, a ``::::`` file, ``-a FILE``
    or stdin.  ``linked`` (``:::+``, ``::::+``) pairs it with the source
    before it, value by value, instead of taking every combination."""

    values: list[str]
    linked: bool = False


def combine(sources: Sequence[Source], max_args: int = 1) -> list[list[str]]:
    """The arguments of each job, in GNU parallel's order: every combination
    of the sources, the first varying slowest; linked sources advance
    together (stopping at the shorter); ``max_args`` tuples go to one job."""
    groups: list[list[tuple[str, ...]]] = []
    for src in sources:
        if src.linked and groups:
            groups[-1] = [a + (b,) for a, b in zip(groups[-1], src.values)]
        else:
            groups.append([(v,) for v in src.values])
    tuples = [sum(combo, ()) for combo in itertools.product(*groups)] if groups else []
    if max_args == 1:
        return [list(t) for t in tuples]
    return [
        [arg for t in tuples[i : i + max_args] for arg in t] for i in range(0, len(tuples), max_args)
    ]


# -- templates ------------------------------------------------------------------
# {} {.} {/} {//} {/.} and their positional forms {1} {1.} ..., {#} and {%}
_REPLACEMENT = re.compile(r"\{(#|%|(\d*)(//|/\.|/|\.)?)\}")
_NO_EXT = re.compile(r"\.[^/.]*$")
_DIR_PART = re.compile(r"^.*/")


def _dirname(path: str) -> str:
    """Perl's File::Basename dirname, as GNU parallel's {//}: '.' when there
    is no directory, '/' for the root."""
    trimmed = path.rstrip("/")
    if not trimmed:
        return "/" if path else "."
    cut = trimmed.rfind("/")
    if cut < 0:
        return "."
    return trimmed[:cut].rstrip("/") or "/"


_MODIFIERS: dict[str, Callable[[str], str]] = {
    "": lambda a: a,
    ".": lambda a: _NO_EXT.sub("", a),
    "/": lambda a: _DIR_PART.sub("", a),
    "//": _dirname,
    "/.": lambda a: _NO_EXT.sub("", _DIR_PART.sub("", a)),
}


class Template:
    """A command template: words joined with spaces, GNU parallel's
    replacement strings substituted (each argument shell-quoted).  Without
    any replacement string the job's arguments are appended."""

    def __init__(self, words: Sequence[str]) -> None:
        self.text = " ".join(words)
        self._parts: list[str | tuple[str, int, str]] = []
        pos = 0
        for m in _REPLACEMENT.finditer(self.text):
            self._parts.append(self.text[pos : m.start()])
            what = m.group(1)
            if what in ("#", "%"):
                self._parts.append((what, 0, ""))
            else:
                self._parts.append(("arg", int(m.group(2) or 0), m.group(3) or ""))
            pos = m.end()
        self._parts.append(self.text[pos:])
        self.appends = len(self._parts) == 1

    def render(self, args: Sequence[str], seq: int, slot: int) -> str:
        if self.appends:
            return " ".join([self.text, *map(shlex.quote, args)]) if args else self.text
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            kind, index, mod = part
            if kind == "#":
                out.append(str(seq))
            elif kind == "%":
                out.append(str(slot))
            elif index == 0:
                out.append(" ".join(shlex.quote(_MODIFIERS[mod](a)) for a in args))
            else:
                value = args[index - 1] if index <= len(args) else ""
                out.append(shlex.quote(_MODIFIERS[mod](value)))
        return "".join(out)


# -- --halt ---------------------------------------------------------------------
@dataclass(frozen=True)
class Halt:
    """GNU parallel's ``--halt WHEN,WHAT=N``: after N failed (``fail``),
    succeeded (``success``) or finished (``done``) jobs, start no more
    (``soon``) or also kill the running ones (``now``)."""

    when: str
    what: str
    count: int


_HALT = re.compile(r"(now|soon),(fail|success|done)=(\d+)")


def parse_halt(text: str) -> Halt | None:
    """None for ``never`` / ``0``; ValueError naming the accepted forms."""
    legacy = {
        "0": None,
        "never": None,
        "1": Halt("soon", "fail", 1),
        "2": Halt("now", "fail", 1),
        "-1": Halt("soon", "success", 1),
        "-2": Halt("now", "success", 1),
    }
    if text in legacy:
        return legacy[text]
    m = _HALT.fullmatch(text)
    if m is None or int(m.group(3)) < 1:
        raise ValueError(
            f"unsupported --halt value {text!r}: give never, now,fail=N, soon,fail=N, "
            "now,success=N, soon,success=N, now,done=N or soon,done=N (N >= 1; "
            "percentages are not supported)"
        )
    return Halt(m.group(1), m.group(2), int(m.group(3)))


# -- what to run ----------------------------------------------------------------
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

    #: the arguments of each job (for a template), or the words of each
    #: command line (without one)
    jobs_args: list[list[str]]
    template: Template | None = None
    jobs: int | None = None
    halt: Halt | None = None
    keep_order: bool = False
    progress: bool = False
    tag: bool = False
    joblog: str | None = None
    timeout: float | None = None
    limits: Limits | None = None  # the governor's (cli.limits)
    #: hooks for samplers and reports (``--trace``/``--report``): ``on_start``
    #: once the pool is open, ``on_job`` as each job ends, ``on_stop`` before
    #: the pool is accounted for and closed
    on_start: list[Callable[[Pool], None]] = field(default_factory=list)
    on_job: list[Callable[[JobRecord], None]] = field(default_factory=list)
    on_stop: list[Callable[[Pool], None]] = field(default_factory=list)

    def command(self, index: int, slot: int) -> str:
        args = self.jobs_args[index]
        if self.template is None:
            return " ".join(args)
        return self.template.render(args, index + 1, slot)

    def tag_of(self, index: int) -> str:
        return " ".join(self.jobs_args[index])


# -- output ---------------------------------------------------------------------
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


class _Job:
    """One started command."""

    __slots__ = (
        "index", "command", "token", "slot", "pid", "pidfd", "start", "wall", "pair",
        "timer", "timed_out", "code",
    )  # fmt: skip

    def __init__(self, index: int, command: str, token: Token, slot: int) -> None:
        self.index = index
        self.command = command
        self.token: Token | None = token
        self.slot = slot
        self.pid: int | None = None
        self.pidfd = -1
        self.start = time.monotonic()
        self.wall = time.time()
        self.pair: tuple[IO[bytes], IO[bytes]] | None = None
        self.timer: Any = None
        self.timed_out = False
        #: the wait status as os.waitstatus_to_exitcode gives it (-N: signal N)
        self.code: int | None = None


class Runner:
    """One ``fastjob parallel`` run."""

    def __init__(self, spec: Spec, pool: Pool) -> None:
        self.spec = spec
        self.pool = pool
        self.client = pool.client
        self.total = len(spec.jobs_args)
        self.next = 0  # index of the next job to start
        self.active = 0  # started and not yet completed
        self.done = 0
        self.failed = 0
        self.succeeded = 0
        self.running: dict[int, _Job] = {}  # pid -> job
        self.stopping = False
        self.halted: Halt | None = None
        self.halt_status = 0
        self.signalled = 0
        self._first_signal = 0.0
        # the signal for a job that registers after a kill went out (a task
        # that was still starting its process then)
        self._kill_new = 0
        self.output_closed = False
        self.records: list[JobRecord] = []
        self._outputs = _Outputs()
        self._free_slots: list[int] = []
        self._nslots = 0
        self._held_output: dict[int, tuple[bytes, bytes]] = {}
        self._next_output = 0
        self._error: BaseException | None = None
        self._all_done: anyio.Event | None = None
        self._tg: Any = None
        self._acquirer_scope: anyio.CancelScope | None = None
        self._loop: Any = None  # the asyncio loop on the callback path
        self._reaper: Any = None  # its _spawn.Reaper (the jobs' pidfds)
        self._t0 = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False
        self._env = pool.env
        self._joblog: IO[bytes] | None = None
        self._paths: dict[str, str] = {}
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

    # -- the run ----------------------------------------------------------------
    async def main(self) -> int:
        if self._fast and _backend_choice() != "trio":
            import asyncio

            from .._spawn import reaper

            self._loop = asyncio.get_running_loop()
            # one epoll set for every job's pidfd, registered with the loop once
            self._reaper = reaper(self._loop)
        self._all_done = anyio.Event()
        if self.spec.joblog is not None:
            self._open_joblog(self.spec.joblog)
        # A signal ignored at startup (nohup, a background job of a script)
        # stays ignored, as in fastjob run and the shells.
        sigs = [s for s in _SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
        try:
            with anyio.open_signal_receiver(*sigs) if sigs else nullcontext() as receiver:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    if receiver is not None:
                        tg.start_soon(self._watch_signals, receiver)
                    if self.spec.progress:
                        tg.start_soon(self._ticker)
                    self._fill()
                    if self._more():
                        tg.start_soon(self._acquire_more)
                    if self.active or self._more():
                        await self._all_done.wait()
                    tg.cancel_scope.cancel()
        finally:
            self._abort_running()
            self._flush_held_output()
            self._outputs.close()
            self._clear_progress()
            if self._joblog is not None and self._joblog.fileno() != 1:
                self._joblog.close()
        if self._error is not None:
            raise self._error
        if self.signalled:
            return 128 + self.signalled
        not_started = self.total - self.next
        if self.halted is not None:
            if not_started:
                h = self.halted
                warn(
                    f"--halt {h.when},{h.what}={h.count}: {not_started} command"
                    f"{'s' if not_started != 1 else ''} not started"
                )
            return self.halt_status
        return min(self.failed, MAX_STATUS)

    def _more(self) -> bool:
        """Are there commands left to start?"""
        return self.next < self.total and not self.stopping

    def _fill(self) -> None:
        """Start a job on every token that is free right now."""
        while self._more():
            tok = self.client.try_acquire()
            if tok is None:
                return
            self._start(tok, self._take_slot())

    async def _acquire_more(self) -> None:
        """The one task that waits for tokens, and only when none is free."""
        with anyio.CancelScope() as self._acquirer_scope:
            while self._more():
                tok = await self.client.acquire()
                if self._more():
                    self._start(tok, self._take_slot())
                else:
                    tok.release()
        self._acquirer_scope = None

    def _stop_scheduling(self) -> None:
        self.stopping = True
        self._all_started()

    def _all_started(self) -> None:
        if self._acquirer_scope is not None:
            self._acquirer_scope.cancel()
        self._check_done()

    def _check_done(self) -> None:
        if not self.active and not self._more() and self._all_done is not None:
            self._all_done.set()

    def _take_slot(self) -> int:
        if self._free_slots:
            return heapq.heappop(self._free_slots)
        self._nslots += 1
        return self._nslots

    # -- signals ----------------------------------------------------------------
    async def _watch_signals(self, receiver: object) -> None:
        async for signum in receiver:  # type: ignore[attr-defined]
            self.on_signal(int(signum), time.monotonic())

    def on_signal(self, signum: int, now: float) -> None:
        """The first signal is forwarded to every running job and stops
        scheduling; a repeat within DUPLICATE_WINDOW seconds of the first is
        the same event seen twice and is ignored; a later one kills."""
        if not self.signalled:
            self.signalled = signum
            self._first_signal = now
            self._stop_scheduling()
            self._kill_all(signum)
        elif now - self._first_signal >= DUPLICATE_WINDOW:
            self._kill_all(signal.SIGKILL)

    def _kill_all(self, signum: int) -> None:
        self._kill_new = signum
        for pid in list(self.running):
            _killpg(pid, signum)

    # -- one job ----------------------------------------------------------------
    def _start(self, tok: Token, slot: int) -> None:
        """Start the next command holding ``tok`` in job slot ``slot``."""
        index = self.next
        self.next += 1
        job = _Job(index, "", tok, slot)
        try:
            job.command = self.spec.command(index, slot)
            job.pair = self._outputs.take()
        except BaseException:
            self._release(job)
            raise
        self.active += 1
        if self._loop is None:
            self._tg.start_soon(self._job_task, job)
        else:
            try:
                self._spawn(job)
                job.pidfd = os.pidfd_open(job.pid)  # type: ignore[arg-type]
            except OSError as exc:
                # completed from the loop, not from here: no recursion
                # through _complete when every command fails to start
                self._loop.call_soon(self._spawn_failed, job, exc)
            else:
                self._reaper.watch(job.pidfd, partial(self._on_exit, job))
                if self.spec.timeout is not None:
                    job.timer = self._loop.call_later(self.spec.timeout, self._time_out, job)
        if self.next == self.total:
            self._all_started()

    def _spawn(self, job: _Job) -> None:
        """posix_spawn the command in its own process group, stdin from
        /dev/null, stdout/stderr into the job's files."""
        assert job.pair is not None
        program, argv = argv_for(job.command)
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, job.pair[0].fileno(), 1),
            (os.POSIX_SPAWN_DUP2, job.pair[1].fileno(), 2),
        ]
        path = self._resolve(program)
        if path is None:  # not found (or not executable): let exec say why
            job.pid = os.posix_spawnp(program, argv, self._env, file_actions=actions, setpgroup=0)
        else:
            job.pid = os.posix_spawn(path, argv, self._env, file_actions=actions, setpgroup=0)
        self._register(job)

    def _resolve(self, program: str) -> str | None:
        """The file a PATH search finds for ``program``, looked up once per
        run (the jobs' PATH does not change); None when there is none."""
        if "/" in program:
            return program
        try:
            return self._paths[program]
        except KeyError:
            found = shutil.which(program, path=self._env.get("PATH", os.defpath))
            if found is not None:
                self._paths[program] = found
            return found

    def _register(self, job: _Job) -> None:
        assert job.pid is not None
        self.running[job.pid] = job
        if self._kill_new:
            _killpg(job.pid, self._kill_new)

    def _on_exit(self, job: _Job) -> None:
        """The pidfd callback: the job has exited."""
        try:
            os.close(job.pidfd)  # fired (one shot): closing takes it out of the set
            job.pidfd = -1
            assert job.pid is not None
            _, wstatus = os.waitpid(job.pid, 0)
            job.code = os.waitstatus_to_exitcode(wstatus)
            self._complete(job)
        except BaseException as exc:  # never lose an error in a loop callback
            self._crash(exc)

    def _time_out(self, job: _Job) -> None:
        """--timeout: SIGTERM the job's group, SIGKILL after a grace."""
        if job.code is not None or job.pid is None:
            return
        job.timed_out = True
        _killpg(job.pid, signal.SIGTERM)
        job.timer = self._loop.call_later(TERM_GRACE, self._kill_late, job)

    def _kill_late(self, job: _Job) -> None:
        if job.code is None and job.pid is not None:
            _killpg(job.pid, signal.SIGKILL)

    def _spawn_failed(self, job: _Job, exc: OSError) -> None:
        try:
            self._note_spawn_error(job, exc)
            self._complete(job)
        except BaseException as err:
            self._crash(err)

    def _note_spawn_error(self, job: _Job, exc: OSError) -> None:
        assert job.pair is not None
        program = argv_for(job.command)[0]
        missing = isinstance(exc, FileNotFoundError)
        what = "command not found" if missing else exc.strerror or str(exc)
        _write_all(job.pair[1].fileno(), os.fsencode(f"fastjob: {program}: {what}\n"))
        job.code = 127 if missing else 126
        if job.pid is not None:  # spawned, but no pidfd: do not leave it running
            self.running.pop(job.pid, None)
            _killpg(job.pid, signal.SIGKILL)
            os.waitpid(job.pid, 0)

    async def _job_task(self, job: _Job) -> None:
        """A job as a task (trio, or the portable anyio.open_process path)."""
        try:
            try:
                if self._kill_new:  # killed before its process started
                    job.code = -self._kill_new
                elif self._fast:
                    await self._wait_spawned(job)
                else:
                    await self._run_anyio(job)
            except OSError as exc:
                self._note_spawn_error(job, exc)
            self._complete(job)
        except BaseException:
            if job.token is not None:  # not completed: no hand-off happened
                self.active -= 1
            self._release(job)
            raise

    async def _wait_spawned(self, job: _Job) -> None:
        self._spawn(job)
        assert job.pid is not None
        try:
            pidfd = os.pidfd_open(job.pid)
        except OSError:
            self.running.pop(job.pid, None)
            _killpg(job.pid, signal.SIGKILL)
            os.waitpid(job.pid, 0)
            raise
        try:
            with anyio.CancelScope(shield=True):
                await self._wait_with_timeout(job, lambda: anyio.wait_readable(pidfd))
        finally:
            os.close(pidfd)
        _, wstatus = os.waitpid(job.pid, 0)
        job.code = os.waitstatus_to_exitcode(wstatus)

    async def _run_anyio(self, job: _Job) -> None:
        assert job.pair is not None
        _, argv = argv_for(job.command)
        proc = await anyio.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=job.pair[0].fileno(),
            stderr=job.pair[1].fileno(),
            env=self._env,
            pass_fds=self._pass_fds,
            start_new_session=True,
        )
        job.pid = proc.pid
        self._register(job)
        try:
            with anyio.CancelScope(shield=True):
                await self._wait_with_timeout(job, proc.wait)
                job.code = await proc.wait()
        finally:
            await proc.aclose()

    async def _wait_with_timeout(self, job: _Job, wait: Callable[[], Any]) -> None:
        if self.spec.timeout is None:
            await wait()
            return
        with anyio.move_on_after(self.spec.timeout):
            await wait()
            return
        assert job.pid is not None
        job.timed_out = True
        _killpg(job.pid, signal.SIGTERM)
        with anyio.move_on_after(TERM_GRACE):
            await wait()
            return
        _killpg(job.pid, signal.SIGKILL)
        await wait()

    def _complete(self, job: _Job) -> None:
        """Bookkeeping for an ended job, then its token goes to the next
        command (a direct hand-off) or back to the pool."""
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        if job.pid is not None:
            self.running.pop(job.pid, None)
        self.active -= 1
        try:
            self._finish(job)
        finally:
            tok, job.token = job.token, None
            if tok is not None:
                if self._more():
                    self._start(tok, job.slot)
                else:
                    heapq.heappush(self._free_slots, job.slot)
                    tok.release()
            self._check_done()

    def _release(self, job: _Job) -> None:
        tok, job.token = job.token, None
        if tok is not None:
            tok.release()
        if job.pair is not None:
            self._outputs.give(job.pair)
            job.pair = None

    def _crash(self, exc: BaseException) -> None:
        """An error inside a loop callback: stop the run and re-raise it."""
        if self._error is None:
            self._error = exc
        self._stop_scheduling()
        self._kill_all(signal.SIGKILL)
        if self._all_done is not None:
            self._all_done.set()

    def _abort_running(self) -> None:
        """On the way out: nothing may keep running or keep a token."""
        for pid, job in list(self.running.items()):
            _killpg(pid, signal.SIGKILL)
            if job.pidfd >= 0 and self._reaper is not None:
                self._reaper.forget(job.pidfd)
                os.close(job.pidfd)
                job.pidfd = -1
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self._release(job)
        self.running.clear()

    def _finish(self, job: _Job) -> None:
        assert job.code is not None and job.pair is not None
        end = time.monotonic()
        status = _status(job.code)
        self.done += 1
        out = _Outputs.collect(job.pair[0])
        err = _Outputs.collect(job.pair[1])
        self._outputs.give(job.pair)
        job.pair = None
        if self.spec.tag:
            tag = os.fsencode(self.spec.tag_of(job.index))
            out = _tag_lines(tag, out)
            err = _tag_lines(tag, err)
        if status:
            self.failed += 1
            if not self.signalled:
                why = "timed out" if job.timed_out else f"exit status {status}"
                err += os.fsencode(f"fastjob: {why}: {job.command}\n")
        else:
            self.succeeded += 1
        self._log_job(job, end)
        self._check_halt(status)
        if self.spec.keep_order:
            self._held_output[job.index] = (out, err)
            while self._next_output in self._held_output:
                self._emit(*self._held_output.pop(self._next_output))
                self._next_output += 1
        else:
            self._emit(out, err)
        if self.spec.progress:
            self._draw(force=self.done == self.total)
        rec = JobRecord(job.index, job.command, job.start, end, status, job.pid)
        self.records.append(rec)
        for cb in self.spec.on_job:
            cb(rec)

    def _check_halt(self, status: int) -> None:
        h = self.spec.halt
        if h is None or self.halted is not None or self.signalled:
            return
        seen = {"fail": self.failed, "success": self.succeeded, "done": self.done}[h.what]
        if (h.what == "fail" and not status) or (h.what == "success" and status):
            return
        if seen < h.count:
            return
        self.halted = h
        # GNU parallel's exit status after a halt: 0 for success=N, the
        # status of the job that triggered it for fail=1 / done=1, else the
        # number of failed jobs
        if h.what == "success":
            self.halt_status = 0
        elif h.count == 1:
            self.halt_status = status
        else:
            self.halt_status = min(self.failed, MAX_STATUS)
        self._stop_scheduling()
        if h.when == "now":
            self._kill_all(signal.SIGTERM)
            for job in self.running.values():
                if self._loop is not None:
                    if job.timer is not None:
                        job.timer.cancel()
                    job.timer = self._loop.call_later(TERM_GRACE, self._kill_late, job)
            if self._loop is None:
                self._tg.start_soon(self._kill_stragglers)

    async def _kill_stragglers(self) -> None:
        await anyio.sleep(TERM_GRACE)
        self._kill_all(signal.SIGKILL)

    def _emit(self, out: bytes, err: bytes) -> None:
        if not (out or err) or self.output_closed:
            return
        self._clear_progress()
        try:
            if out:
                _write_all(1, out)
            if err:
                _write_all(2, err)
        except BrokenPipeError:
            self.output_closed = True
            self._stop_scheduling()

    def _flush_held_output(self) -> None:
        for index in sorted(self._held_output):
            self._emit(*self._held_output.pop(index))

    # -- --joblog ---------------------------------------------------------------
    def _open_joblog(self, path: str) -> None:
        self._joblog = open(1, "wb", closefd=False) if path == "-" else open(path, "wb")  # noqa: SIM115
        self._joblog.write(b"Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n")
        self._joblog.flush()

    def _log_job(self, job: _Job, end: float) -> None:
        """One line in GNU parallel's joblog format (Host ':' is this host)."""
        if self._joblog is None:
            return
        assert job.code is not None
        if job.timed_out:
            exitval, sig = -1, (-job.code if job.code < 0 else 0)
        elif job.code < 0:
            exitval, sig = 0, -job.code
        else:
            exitval, sig = job.code, 0
        line = (
            f"{job.index + 1}\t:\t{job.wall:.3f}\t{end - job.start:10.3f}\t0\t0\t"
            f"{exitval}\t{sig}\t{job.command}\n"
        )
        self._joblog.write(os.fsencode(line))
        self._joblog.flush()

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


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _backend_choice() -> str:
    return os.environ.get("FASTJOB_PARALLEL_BACKEND", "")


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
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join(tag + b"\t" + ln + b"\n" for ln in lines)


def dry_run(spec: Spec) -> int:
    """--dry-run: print each command (GNU's {%} is 1 there too), run nothing."""
    out = b"".join(os.fsencode(spec.command(i, 1)) + b"\n" for i in range(len(spec.jobs_args)))
    try:
        _write_all(1, out)
    except BrokenPipeError:
        return 1
    return 0


def parallel(spec: Spec) -> int:
    """Run the spec's jobs in the inherited pool or a new one of spec.jobs;
    returns the number of failed commands (at most 101), the failing job's
    status after --halt, 128+N on signal N."""
    if not spec.jobs_args:
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
    choice = _backend_choice()
    if choice == "trio":
        return {"backend": "trio"}
    if choice == "uvloop":
        return {"backend_options": {"use_uvloop": True}}
    return {}
