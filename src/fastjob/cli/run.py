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
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import FrameType
from typing import Any

from .._governor import Limits
from .pool import Pool, open_pool, warn

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


def _wait(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the command.  It runs in its own process group, which is not
    the terminal's foreground group: if it stops to read from (or configure)
    the terminal, it is given the terminal and continued; fastjob takes the
    terminal back when it exits."""
    tty = _terminal_fd()
    handed = False
    try:
        while True:
            try:
                _, wstatus = os.waitpid(proc.pid, os.WUNTRACED)
            except ChildProcessError:
                return proc.wait()
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
            proc.returncode = os.waitstatus_to_exitcode(wstatus)
            return proc.returncode
    finally:
        if handed and tty is not None:
            _set_foreground(tty, os.getpgrp())


def _spawn(
    command: Sequence[str], env: dict[str, str], pass_fds: tuple[int, ...]
) -> subprocess.Popen[bytes]:
    group: dict[str, Any] = (
        {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
    )
    return subprocess.Popen(
        list(command), env=env, pass_fds=pass_fds, restore_signals=True, **group
    )


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
    child: list[subprocess.Popen[bytes]] = []
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
    child: list[subprocess.Popen[bytes]],
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
