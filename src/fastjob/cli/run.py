"""``fastjob run``: run one command under a jobserver.

The command runs in its own process group; SIGINT, SIGTERM and SIGHUP sent
to fastjob are forwarded to that group, except a repeat of a signal within
DUPLICATE_WINDOW seconds of its last forwarding (the same event delivered
to fastjob and again to its process group, as ``timeout -s INT`` does).  A
new pool is accounted for and closed (its FIFO removed) on every exit path.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time

from .pool import open_pool, warn

# Not typing.TYPE_CHECKING: neither typing nor subprocess (nor contextlib, nor
# the governor) is imported on fastjob run's path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Sequence
    from contextlib import AbstractContextManager
    from types import FrameType
    from typing import Any

    from .._governor import Limits
    from .pool import Pool

FORWARDED = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
#: A signal repeated within this many seconds of its last forwarding is the
#: same event seen twice and is not forwarded again (fastjob parallel uses
#: the same window before it escalates).
DUPLICATE_WINDOW = 0.5


class RunHooks:
    """Callbacks around the command (for samplers such as ``--trace``):
    ``started(pid, pool)`` right after the spawn, ``stopped(pid, status)``
    after it was reaped, before the pool is accounted for and closed."""

    def __init__(
        self,
        started: list[Callable[[int, Pool], None]] | None = None,
        stopped: list[Callable[[int, int], None]] | None = None,
    ) -> None:
        self.started = started or []
        self.stopped = stopped or []


def exit_status(returncode: int) -> int:
    """Popen's returncode as a shell reports it (128+N for signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def _terminal_fd() -> int | None:
    """stdin if it is our controlling terminal and we are in its foreground."""
    try:
        if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
            return 0
    except OSError:
        pass
    return None


def _set_foreground(fd: int, pgid: int) -> None:
    # A background group calling tcsetpgrp gets SIGTTOU unless it is ignored.
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(fd, pgid)
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, old)


class _Child:
    """The command: its pid (also its process group's id), and the Popen
    object where it was started by subprocess (no posix_spawn here)."""

    __slots__ = ("pid", "popen")

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.popen = popen


def _wait(proc: _Child) -> int:
    """Wait for the command; its returncode as Popen gives it (-N for signal
    N).  It runs in its own process group, which is not the terminal's
    foreground group: if it stops to read from (or configure) the terminal,
    it is given the terminal and continued; fastjob takes the terminal back
    when it exits."""
    tty = _terminal_fd()
    handed = False
    try:
        while True:
            try:
                _, wstatus = os.waitpid(proc.pid, os.WUNTRACED)
            except ChildProcessError:
                # reaped elsewhere: Popen.wait() says 0 then
                return proc.popen.wait() if proc.popen is not None else 0
            if os.WIFSTOPPED(wstatus):
                if (
                    tty is not None
                    and not handed
                    and os.WSTOPSIG(wstatus) in (signal.SIGTTIN, signal.SIGTTOU)
                ):
                    _set_foreground(tty, proc.pid)
                    handed = True
                    try:
                        os.killpg(proc.pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
                continue  # other stops (SIGSTOP, Ctrl-Z) are the user's business
            code = os.waitstatus_to_exitcode(wstatus)
            if proc.popen is not None:
                proc.popen.returncode = code
            return code
    finally:
        if handed and tty is not None:
            _set_foreground(tty, os.getpgrp())


#: posix_spawn where the fds to close can be listed (/proc/self/fd); else
#: subprocess.Popen, as before.
_POSIX_SPAWN = sys.platform.startswith("linux") and hasattr(os, "posix_spawn")


def _spawn(command: Sequence[str], env: dict[str, str], pass_fds: tuple[int, ...]) -> _Child:
    """Start ``command`` in a process group of its own, as
    ``subprocess.Popen(command, env=env, pass_fds=pass_fds,
    restore_signals=True, process_group=0)`` does (``start_new_session``
    before Python 3.11), without importing subprocess: ``os.posix_spawn``
    (a vfork-style clone), the program searched for in ``env``'s PATH,
    SIGPIPE and SIGXFSZ at their defaults, inheritable fds other than
    ``pass_fds`` closed.  OSError as Popen raises it (ENOENT: not found)."""
    if not _POSIX_SPAWN:
        import subprocess

        group: dict[str, Any] = (
            {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
        )
        popen = subprocess.Popen(
            list(command), env=env, pass_fds=pass_fds, restore_signals=True, **group
        )
        return _Child(popen.pid, popen)
    argv = list(command)
    keep = set(pass_fds)
    actions = [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd not in keep]
    made = [fd for fd in keep if not os.get_inheritable(fd)]
    for fd in made:
        os.set_inheritable(fd, True)
    try:
        sigdef = [signal.SIGPIPE, signal.SIGXFSZ]
        session = sys.version_info < (3, 11)
        error: OSError | None = None
        last: OSError | None = None
        for path in _candidates(argv[0], env):
            try:
                if session:
                    pid = os.posix_spawn(path, argv, env, file_actions=actions, setsid=True, setsigdef=sigdef)
                else:
                    pid = os.posix_spawn(path, argv, env, file_actions=actions, setpgroup=0, setsigdef=sigdef)
                return _Child(pid)
            except OSError as exc:
                # as subprocess: the first error other than "not there" wins
                last = exc
                if error is None and exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    error = exc
        assert last is not None
        raise error or last
    finally:
        for fd in made:
            os.set_inheritable(fd, False)


def _candidates(name: str, env: dict[str, str]) -> list[str]:
    """The paths subprocess would try for program ``name``: itself when it
    has a directory part, else each directory of ``env``'s PATH; a path that
    cannot exist (ENOENT, ENOTDIR) is left out unless it is the last one, to
    spare a spawn for each empty PATH directory."""
    if os.path.dirname(name):
        return [name]
    paths = [os.path.join(d, name) for d in os.get_exec_path(env)]
    out = []
    for path in paths[:-1]:
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
        out.append(path)
    if paths:
        out.append(paths[-1])
    return out or [name]


def _inheritable_fds() -> list[int]:
    """fds above 2 this process has that a child would inherit (its parent
    left them inheritable: make's pool in a ``+`` recipe, say); subprocess's
    close_fds=True closes them in the child."""
    found = []
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    found.append(fd)
            except OSError:
                continue  # the listing's own fd, closed by now
    return found


class _Stopped(Exception):
    """A forwarded signal arrived while no command ran yet (waiting for slots)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run(
    command: Sequence[str],
    jobs: int | None = None,
    style: str | None = None,
    hooks: RunHooks | None = None,
    limits: Limits | None = None,
    hold: Callable[[Pool], AbstractContextManager[dict[str, str]]] | None = None,
) -> int:
    """Run ``command`` in the inherited pool (``jobs`` None) or a new one;
    returns its exit status (128+N when killed by signal N).

    ``hold(pool)``, when given, is entered once the pool is open (it may
    wait for slots; a signal then stops the wait) and yields variables for
    the command's environment; it is left after the command was reaped and
    before the pool is accounted for (``fastjob threads`` holds its slots so)."""
    pending: list[int] = []
    child: list[_Child] = []
    last_sent: dict[int, float] = {}
    waiting = [False]

    def forward(signum: int, frame: FrameType | None) -> None:
        if not child:
            pending.append(signum)
            if waiting[0]:
                waiting[0] = False
                raise _Stopped(signum)
            return
        now = time.monotonic()
        if now - last_sent.get(signum, float("-inf")) < DUPLICATE_WINDOW:
            return  # the same event, delivered to us and to our group
        last_sent[signum] = now
        try:
            os.killpg(child[0].pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    # A signal ignored at startup (a background job of a script) stays ignored.
    wanted = [sig for sig in FORWARDED if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, forward) for sig in wanted}
    pool: Pool | None = None
    try:
        pool = open_pool(jobs, style, limits=limits)
        if pool.server is not None:
            # The Server put its own FIFO-cleanup handler in; forwarding wins
            # and the FIFO goes away in pool.finish() below.
            for sig in wanted:
                signal.signal(sig, forward)
        if pending:
            return 128 + pending[0]
        if hold is None:
            return _run_in(command, pool, pool.env, child, pending, forward, hooks)
        try:
            waiting[0] = True
            held = hold(pool)
            env_extra = held.__enter__()
            waiting[0] = False
        except _Stopped as stop:
            return 128 + stop.signum
        try:
            if pending:
                return 128 + pending[0]
            env = {**pool.env, **env_extra}
            return _run_in(command, pool, env, child, pending, forward, hooks)
        finally:
            held.__exit__(None, None, None)
    finally:
        try:
            if pool is not None:
                pool.finish()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _run_in(
    command: Sequence[str],
    pool: Pool,
    env: dict[str, str],
    child: list[_Child],
    pending: list[int],
    forward: Callable[[int, FrameType | None], None],
    hooks: RunHooks | None,
) -> int:
    try:
        proc = _spawn(command, env, pool.pass_fds)
    except OSError as exc:
        name = command[0]
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            warn(f"{name}: command not found")
            return 127
        warn(f"cannot run {name}: {exc.strerror}")
        return 126
    child.append(proc)
    for signum in dict.fromkeys(pending):
        forward(signum, None)
    if hooks is not None:
        for on_start in hooks.started:
            on_start(proc.pid, pool)
    status = exit_status(_wait(proc))
    if hooks is not None:
        for on_stop in hooks.stopped:
            on_stop(proc.pid, status)
    return status
