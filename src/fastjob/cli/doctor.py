"""``fastjob doctor``: explain the jobserver this process would see.

Inspects without side effects: fds are only fstat'ed and FIONREAD'ed, a FIFO
is opened for reading without a writer (a token read by accident is written
straight back).  The fd checks run first, before fastjob opens anything that
could take a closed jobserver fd's number.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import _io
from .._discovery import FIX_FIFO, FIX_PIPE, find_jobserver
from .._errors import InvalidAuthError
from .._makeflags import JOBSERVER_VARIABLES, JobserverAuth, split_words

USABLE, BROKEN, NONE = 0, 1, 2
VERDICTS = {USABLE: "usable", BROKEN: "broken", NONE: "none"}

FIX_NONE = (
    "run the command from a recipe of 'make -jN' (marked recursive with '+' or "
    "using $(MAKE)), from cargo, or wrap it: fastjob run -jN -- COMMAND"
)
FIX_DISABLED = (
    "make disables the jobserver for recipe lines it does not know are recursive: "
    "prefix the line with '+' or run the command through $(MAKE); with CMake >= 3.28 "
    "set JOB_SERVER_AWARE TRUE on the custom command"
)
FIX_PIPE_PARENT = (
    "the process that started this one must let the fds survive exec: Python's "
    "subprocess closes them unless they are listed in pass_fds (with fastjob: "
    "pass_fds=client.pass_fds); a make parent must mark the recipe line with '+' or "
    "use $(MAKE); inside $(shell ...) clear it with MAKEFLAGS="
)
FIX_SEM = "semaphore jobservers exist only on Windows; run the build and this command there"
FIX_FOREIGN = (
    "run the build as the same user, or set FASTJOB_ALLOW_FOREIGN_FIFO=1 if you trust "
    "the FIFO's owner (make and ninja would use it)"
)


@dataclass
class FdReport:
    """One jobserver fd as this process has it."""

    fd: int
    role: str
    open: bool
    error: str | None = None
    target: str | None = None
    kind: str | None = None
    inode: int | None = None
    access: str | None = None
    nonblocking: bool | None = None
    cloexec: bool | None = None


@dataclass
class FifoReport:
    """A ``fifo:PATH`` jobserver as seen from here."""

    path: str
    exists: bool = False
    is_fifo: bool | None = None
    kind: str | None = None
    mode: str | None = None
    owner_uid: int | None = None
    yours: bool | None = None
    openable: bool | None = None
    open_error: str | None = None
    has_writer: bool | None = None
    creator_pid: int | None = None
    creator_alive: bool | None = None


@dataclass
class Diagnosis:
    """Everything ``fastjob doctor`` found; ``status`` is the exit code."""

    status: int = NONE
    verdict: str = "none"
    variable: str | None = None
    value: str | None = None
    others: dict[str, str] = field(default_factory=dict)
    style: str | None = None
    jobs: int | None = None
    dry_run: bool = False
    fds: list[FdReport] = field(default_factory=list)
    same_pipe: bool | None = None
    fifo: FifoReport | None = None
    tokens_free: int | None = None
    problem: str = ""
    fix: str = ""
    notes: list[str] = field(default_factory=list)


_ACCESS = {os.O_RDONLY: "read-only", os.O_WRONLY: "write-only", os.O_RDWR: "read-write"}


def inspect_fd(fd: int, role: str) -> FdReport:
    """fstat/fcntl facts about fd (never changes it)."""
    try:
        info = _io.fd_info(fd)
    except OSError as exc:
        return FdReport(fd, role, False, error=f"{exc.strerror} (os error {exc.errno})")
    try:
        target: str | None = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = None
    return FdReport(
        fd,
        role,
        True,
        target=target,
        kind=info.kind,
        inode=info.ino,
        access=_ACCESS.get(info.access, "unknown"),
        nonblocking=info.nonblocking,
        cloexec=info.cloexec,
    )


def _in_make() -> bool:
    return "MAKELEVEL" in os.environ


def _diagnose_pipe(d: Diagnosis, auth: JobserverAuth) -> None:
    assert auth.read_fd is not None and auth.write_fd is not None
    r = inspect_fd(auth.read_fd, "read")
    w = inspect_fd(auth.write_fd, "write")
    d.fds = [r, w]
    d.fix = FIX_PIPE
    closed = [f for f in (r, w) if not f.open]
    reused = [f for f in (r, w) if f.open and f.kind != "pipe"]
    if not _in_make():
        d.fix = FIX_PIPE_PARENT
    if reused:
        f = reused[0]
        what = f"{f.kind} {f.target}" if f.target else f"{f.kind}"
        d.problem = (
            f"file descriptor {f.fd} (the {f.role} end) is open but is a {what}, not a "
            "pipe: the jobserver fds were closed and the number reused for another file"
        )
        if closed:
            d.problem += f"; file descriptor {closed[0].fd} (the {closed[0].role} end) is closed"
        return
    if closed:
        which = " and ".join(f"{f.fd} (the {f.role} end)" for f in closed)
        are = "are" if len(closed) > 1 else "is"
        d.problem = f"file descriptor {which} {are} closed in this process"
        if _in_make():
            d.problem += (
                ": make named the jobserver but closed its fds for this recipe line "
                "because it does not know the line is recursive"
            )
        else:
            d.problem += ": the parent named the jobserver but did not pass its fds"
        return
    d.same_pipe = r.inode == w.inode
    if not d.same_pipe:
        d.problem = (
            f"file descriptors {r.fd} and {w.fd} are two different pipes (inodes "
            f"{r.inode} and {w.inode}): at least one number was reused"
        )
        return
    if r.access == "write-only" or w.access == "read-only":
        d.problem = (
            f"file descriptor {r.fd} is {r.access} and {w.fd} is {w.access}: the read "
            "and write ends are swapped"
        )
        return
    try:
        d.tokens_free = _io.available(auth.read_fd)
    except OSError:
        d.tokens_free = None
    d.status = USABLE
    if r.nonblocking:
        d.notes.append(
            "the shared read end is O_NONBLOCK (make >= 4.3 and ninja set it): a client "
            "doing a plain blocking read() gets EAGAIN; fastjob reads it safely"
        )
    if r.cloexec or w.cloexec:
        d.notes.append(
            "the fds are close-on-exec here: programs this process starts will not "
            "inherit them unless it passes them on (subprocess pass_fds)"
        )


_MAKE_FIFO = re.compile(r"GMfifo([0-9]+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fifo_writers(st: os.stat_result) -> bool | None:
    """Whether some process holds the FIFO open for writing (Linux /proc
    scan of the processes we may look at); None when that cannot be known."""
    if not os.path.isdir("/proc/self/fdinfo"):
        return None
    me = str(os.getpid())
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
    except OSError:
        return None
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                fst = os.stat(f"/proc/{pid}/fd/{fd}")
                if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    flags = next(
                        (int(line.split()[1], 8) for line in f if line.startswith("flags:")), 0
                    )
            except (OSError, ValueError):
                continue
            if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                return True
    return False


def _diagnose_fifo(d: Diagnosis, auth: JobserverAuth) -> None:
    assert auth.path is not None
    path = auth.path
    fr = FifoReport(path)
    d.fifo = fr
    d.fix = FIX_FIFO
    m = _MAKE_FIFO.search(os.path.basename(path))
    if m:
        fr.creator_pid = int(m.group(1))
        fr.creator_alive = _pid_alive(fr.creator_pid)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        d.problem = f"the jobserver FIFO {path} does not exist"
        if fr.creator_pid is not None and not fr.creator_alive:
            d.problem += f": the make that created it (pid {fr.creator_pid}) has exited"
        else:
            d.problem += (
                ": its make has exited, or this process runs in a sandbox or container "
                "that does not see the creator's temporary directory"
            )
        return
    except OSError as exc:
        d.problem = f"cannot stat the jobserver FIFO {path}: {exc.strerror}"
        return
    fr.exists = True
    fr.is_fifo = stat.S_ISFIFO(st.st_mode)
    fr.kind = _io.FdInfo(st.st_mode, 0, 0, 0, 0, 0).kind
    fr.mode = stat.filemode(st.st_mode)
    fr.owner_uid = st.st_uid
    fr.yours = not hasattr(os, "geteuid") or st.st_uid == os.geteuid()
    if not fr.is_fifo:
        d.problem = f"the jobserver path {path} is a {fr.kind}, not a FIFO"
        return
    try:
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        fr.openable = False
        fr.open_error = f"{exc.strerror} (os error {exc.errno})"
        d.problem = f"cannot open the jobserver FIFO {path} for reading: {exc.strerror}"
        if exc.errno == errno.EACCES:
            d.fix = FIX_FOREIGN
        return
    fr.openable = True
    try:
        tokens = _io.available(rfd)
        d.tokens_free = tokens
        if tokens == 0:
            # With no writer anywhere a non-blocking read says EOF at once.
            got = _io.try_read(rfd)
            if got >= 0:  # a token arrived meanwhile: not ours, put it back
                wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    _io.write(wfd, got)
                finally:
                    os.close(wfd)
                fr.has_writer = True
            else:
                fr.has_writer = got != _io.EOF
        else:
            fr.has_writer = _fifo_writers(st)
    finally:
        os.close(rfd)
    if fr.has_writer is False:
        d.problem = (
            f"the jobserver FIFO {path} is stale: no process holds it open for writing, "
            "so the make that created it has exited (killed?) and left it behind"
        )
        if fr.creator_pid is not None and not fr.creator_alive:
            d.problem += f" (pid {fr.creator_pid} is gone)"
        d.fix = f"remove {path} and run the command from a live make (or fastjob run)"
        return
    if not fr.yours:
        d.problem = (
            f"the jobserver FIFO {path} belongs to uid {st.st_uid}, not to you; "
            "fastjob refuses it (another user could steal or forge tokens)"
        )
        d.fix = FIX_FOREIGN
        return
    d.status = USABLE


def diagnose(environ: Mapping[str, str] | None = None) -> Diagnosis:
    """Inspect the jobserver named in ``environ`` (default os.environ)."""
    env = os.environ if environ is None else environ
    d = Diagnosis()
    d.others = {v: env[v] for v in JOBSERVER_VARIABLES if v in env}
    try:
        found = find_jobserver(env)
    except InvalidAuthError as exc:
        d.status = BROKEN
        var = next(v for v in JOBSERVER_VARIABLES if env.get(v) and v in str(exc))
        d.variable, d.value = var, env[var]
        d.problem = str(exc).split(": ", 1)[-1]
        d.fix = "set the variable to a value make writes, e.g. ' -j4 --jobserver-auth=3,4'"
        return _finish(d)
    if found is None:
        set_vars = ", ".join(f"{k}={v!r}" for k, v in d.others.items())
        if set_vars:
            d.problem = (
                f"{set_vars} names no jobserver: make was run without -j (or with -j1), "
                "or this command was not started by a parallel make"
            )
        else:
            d.problem = "none of CARGO_MAKEFLAGS, MAKEFLAGS, MFLAGS is set"
        d.fix = FIX_NONE
        return _finish(d)
    var, value, auth, disabled = found
    d.variable, d.value = var, value
    if auth is None:  # disabled on purpose: negative fds
        d.style = "disabled"
        _explain_disabled(d, value)
        return _finish(d)
    d.style, d.jobs, d.dry_run = auth.style, auth.jobs, auth.dry_run
    d.status = BROKEN
    if auth.style == "pipe":
        _diagnose_pipe(d, auth)
    elif auth.style == "fifo":
        _diagnose_fifo(d, auth)
    elif sys.platform != "win32":
        d.problem = f"{auth.name!r} is a Windows semaphore name; there are none on this system"
        d.fix = FIX_SEM
    else:  # pragma: no cover - Windows
        d.status = USABLE
    if d.dry_run:
        d.notes.append("make runs in dry-run mode (-n): it only prints what it would do")
    return _finish(d)


FIX_DISABLED_VARIABLE = (
    "write the '+' literally at the start of the recipe line (make does not see a "
    "'+' that comes from a variable when it writes MAKEFLAGS), or put $(MAKE) in the "
    "line; with CMake >= 3.28 set JOB_SERVER_AWARE TRUE on the custom command"
)


def _auth_options(value: str) -> list[str]:
    """Every jobserver option in value, in order (none after `` -- ``)."""
    out = []
    for w in split_words(value):
        if w == "--":
            break
        if w.startswith(("--jobserver-auth=", "--jobserver-fds=")):
            out.append(w)
    return out


def _explain_disabled(d: Diagnosis, value: str) -> None:
    """Why a ``-2,-2`` disables the jobserver, and what to do."""
    options = _auth_options(value)
    earlier = [o for o in options[:-1] if o.startswith("--jobserver-auth=")]
    serial = (
        "fastjob (connect(), fastjob run and fastjob parallel without -j) runs one job "
        "at a time here, as make does"
    )
    if earlier and earlier[-1] != options[-1]:
        first = earlier[-1]
        m = re.fullmatch(r"--jobserver-auth=([0-9]+),([0-9]+)", first)
        fds = [int(m[1]), int(m[2])] if m else []
        opened = [fd for fd in fds if inspect_fd(fd, "").kind == "pipe"]
        d.problem = (
            f"the jobserver is named twice: {first} and then {options[-1]}; the last "
            "--jobserver-auth wins (make's rule, which fastjob, cargo and ninja follow), "
            "so it is disabled on purpose: make 4.4.1 marked this recipe line as not "
            "recursive when it wrote MAKEFLAGS"
        )
        if opened:
            d.problem += (
                " and yet kept the fds open: the line's '+' comes from a variable, which "
                "make sees only after it wrote MAKEFLAGS"
            )
            which = " and ".join(map(str, opened))
            d.notes.append(
                f"{'fds' if len(opened) > 1 else 'fd'} {which} of {first} "
                f"{'are' if len(opened) > 1 else 'is'} open here, but using them would "
                "override make's decision; fastjob does not"
            )
            d.fix = FIX_DISABLED_VARIABLE
        else:
            d.problem += " (no '+' and no $(MAKE) in it) and closed the fds"
            d.fix = FIX_DISABLED
    else:
        d.problem = (
            "the jobserver is disabled on purpose (--jobserver-auth with negative fds, "
            "e.g. -2,-2): make 4.4 does this for recipe lines it does not know are recursive"
        )
        d.fix = FIX_DISABLED
    d.notes.append(serial)


def _finish(d: Diagnosis) -> Diagnosis:
    d.verdict = VERDICTS[d.status]
    if d.status == USABLE:
        d.problem = ""
        d.fix = ""
    return d


# -- output ----------------------------------------------------------------------
def _fd_line(f: FdReport) -> str:
    if not f.open:
        return f"closed ({f.error})"
    parts = [f"open, {f.kind}"]
    if f.kind == "pipe":
        parts[0] += f" inode {f.inode}"
    elif f.target:
        parts[0] += f" {f.target}"
    parts.append(f"{f.access}")
    parts.append("O_NONBLOCK" if f.nonblocking else "blocking")
    parts.append("close-on-exec" if f.cloexec else "inherited by children")
    return ", ".join(parts)


def render_text(d: Diagnosis) -> str:
    """The report as a person reads it."""
    rows: list[tuple[str, str]] = []
    if d.variable is not None:
        rows.append(("variable", d.variable))
        rows.append(("value", repr(d.value)))
        also = [v for v in d.others if v != d.variable]
        if also:
            rows.append(("also set", ", ".join(also)))
    else:
        for k, v in d.others.items():
            rows.append((k, repr(v)))
    if d.style is not None:
        style = d.style
        if d.style == "pipe" and len(d.fds) == 2:
            style += f" (read fd {d.fds[0].fd}, write fd {d.fds[1].fd})"
        elif d.fifo is not None:
            style += f" ({d.fifo.path})"
        if d.jobs is not None:
            style += f", -j{d.jobs}"
        rows.append(("style", style))
    for f in d.fds:
        rows.append((f"{f.role} fd {f.fd}", _fd_line(f)))
    if d.same_pipe is not None:
        rows.append(("same pipe", "yes" if d.same_pipe else "no"))
    fr = d.fifo
    if fr is not None:
        rows.append(("exists", "yes" if fr.exists else "no"))
        if fr.exists:
            rows.append(("is a FIFO", "yes" if fr.is_fifo else f"no, a {fr.kind}"))
            you = "you" if fr.yours else "NOT you"
            rows.append(("permissions", f"{fr.mode}, owner uid {fr.owner_uid} ({you})"))
        if fr.openable is not None:
            rows.append(("openable", "yes" if fr.openable else f"no: {fr.open_error}"))
        if fr.has_writer is not None:
            rows.append(("has a writer", "yes (its owner is alive)" if fr.has_writer else "NO"))
        if fr.creator_pid is not None:
            alive = "running" if fr.creator_alive else "gone"
            rows.append(("created by", f"make pid {fr.creator_pid} ({alive})"))
    if d.tokens_free is not None:
        free = str(d.tokens_free)
        if d.jobs is not None:
            free += f" (a -j{d.jobs} pool holds {d.jobs - 1} when idle)"
        rows.append(("tokens free", free))
    width = max((len(k) for k, _ in rows), default=0)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    if d.status == USABLE:
        lines.append(f"verdict: usable ({d.style} jobserver)")
    elif d.status == BROKEN:
        lines.append(f"verdict: BROKEN: {d.problem}")
    else:
        lines.append(f"verdict: no jobserver: {d.problem}")
    for n in d.notes:
        lines.append(f"note: {n}")
    if d.fix:
        lines.append(f"fix: {d.fix}")
    return "\n".join(lines) + "\n"


def render_json(d: Diagnosis) -> str:
    """The report for machines (one JSON object)."""
    data: dict[str, Any] = asdict(d)
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def doctor(as_json: bool = False) -> int:
    """Print the diagnosis; returns 0 usable, 1 named but broken, 2 none."""
    d = diagnose()
    out = render_json(d) if as_json else render_text(d)
    sys.stdout.write(out)
    sys.stdout.flush()
    return d.status
