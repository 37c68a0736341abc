"""from_env() and connect(): find the jobserver this process was given."""

from __future__ import annotations

import atexit
import os
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING: nothing more is imported for annotations
if TYPE_CHECKING:
    from collections.abc import Mapping

from ._errors import (
    BadFdError,
    FifoError,
    InvalidAuthError,
    JobserverClosedError,
    JobserverError,
    JobserverWarning,
    warn_at_caller,
)
from ._makeflags import JOBSERVER_VARIABLES, JobserverAuth, scan_makeflags
from ._core.transport import open_transport
from .client import Client
from .server import Server

FIX_PIPE = (
    "make passes its jobserver only to recipe lines it knows are recursive: prefix "
    "the line with '+' or run the command through $(MAKE); inside $(shell ...) clear "
    "it with MAKEFLAGS=; with CMake >= 3.28 set JOB_SERVER_AWARE TRUE on the custom "
    "command; a Python parent must list the fds in subprocess pass_fds"
)
FIX_FIFO = (
    "run this command while the make that created the FIFO is still running, and "
    "outside any sandbox or container that hides its temporary directory"
)


def find_jobserver(
    environ: Mapping[str, str] | None = None,
) -> tuple[str, str, JobserverAuth | None, bool] | None:
    """(variable, value, auth, disabled) for the first variable naming a
    jobserver (CARGO_MAKEFLAGS, MAKEFLAGS, MFLAGS), or None.  Raises
    InvalidAuthError (with the variable named) for a malformed one."""
    env = os.environ if environ is None else environ
    for var in JOBSERVER_VARIABLES:
        value = env.get(var)
        if not value:
            continue
        try:
            parsed = scan_makeflags(value)
        except InvalidAuthError as exc:
            raise InvalidAuthError(_message(var, value, str(exc), "")) from None
        if parsed.auth is not None or parsed.disabled:
            return var, value, parsed.auth, parsed.disabled
    return None


def _message(var: str, value: str, what: str, fix: str) -> str:
    text = f"failed to connect to jobserver from environment variable `{var}={value!r}`: {what}"
    return f"{text}. Fix: {fix}" if fix else text


def from_env(
    environ: Mapping[str, str] | None = None,
    strict: bool = False,
    *,
    implicit_token: bool = True,
    allow_foreign: bool = False,
) -> Client | None:
    """The jobserver named in the environment, validated, as a Client.

    None when no jobserver is named or it is disabled on purpose (negative
    fds).  When one is named but unusable: a JobserverWarning and None, or
    with ``strict=True`` the specific JobserverError.  Inherited fds are
    never closed, made close-on-exec or changed to/from O_NONBLOCK.
    """
    try:
        return _open_env(environ, implicit_token=implicit_token, allow_foreign=allow_foreign)
    except JobserverError as exc:
        if strict:
            raise
        warn_at_caller(str(exc), JobserverWarning)
        return None


def _open_env(
    environ: Mapping[str, str] | None, *, implicit_token: bool = True, allow_foreign: bool = False
) -> Client | None:
    """from_env(strict=True)."""
    found = find_jobserver(environ)
    if found is None:
        return None
    var, value, auth, disabled = found
    if auth is None:
        return None
    try:
        transport = open_transport(auth, allow_foreign=allow_foreign)
    except BadFdError as exc:
        raise type(exc)(_message(var, value, str(exc), FIX_PIPE)) from None
    except (FifoError, JobserverClosedError) as exc:
        raise type(exc)(_message(var, value, str(exc), FIX_FIFO)) from None
    except JobserverError as exc:
        raise type(exc)(_message(var, value, str(exc), "")) from None
    return Client(transport, implicit_token=implicit_token, jobs=auth.jobs, source=var)


SERIAL = (
    "fastjob runs one job at a time (a pool of 1: the implicit slot), as make does "
    "(\"jobserver unavailable: using -j1\")"
)


def disabled_message(var: str, value: str) -> str:
    """Why a ``--jobserver-auth=-2,-2`` means serial, and the fix."""
    return (
        f"the jobserver in `{var}={value!r}` is disabled on purpose (its last "
        "--jobserver-auth is -2,-2: make writes that for a recipe line it does not "
        "know is recursive, so the command must not run jobs in parallel); "
        f"{SERIAL}. Fix: {FIX_PIPE}"
    )


class Inherited:
    """What the environment offers: a usable client, or why not (the text
    of the warning), or nothing."""

    __slots__ = ("client", "problem", "variable")

    def __init__(self, client: Client | None, problem: str | None, variable: str | None) -> None:
        self.client = client
        self.problem = problem
        self.variable = variable


def inspect_env(environ: Mapping[str, str] | None = None) -> Inherited:
    """Open the inherited jobserver; on failure say what a serial fallback
    should tell the user (named but unusable, or disabled with -2,-2)."""
    try:
        found = find_jobserver(environ)
    except InvalidAuthError as exc:
        return Inherited(None, f"{exc}; {SERIAL}", None)
    if found is None:
        return Inherited(None, None, None)
    var, value, auth, disabled = found
    if auth is None:
        return Inherited(None, disabled_message(var, value), var)
    try:
        client = _open_env(environ)
    except JobserverError as exc:
        text = str(exc)
        if ". Fix: " in text:
            what, fix = text.split(". Fix: ", 1)
            text = f"{what}; {SERIAL}. Fix: {fix}"
        else:
            text = f"{text}; {SERIAL}"
        return Inherited(None, text, var)
    return Inherited(client, None, var)


def usable_jobserver(environ: Mapping[str, str] | None = None) -> str | None:
    """The variable naming a jobserver this process could join, else None
    (opens the pool's transport to be sure, and closes it again)."""
    try:
        found = find_jobserver(environ)
        if found is None or found[2] is None:
            return None
        open_transport(found[2]).close()
    except JobserverError:
        return None
    return found[0]


def _close_default() -> None:
    """At exit: the pool connect() created is checked and closed (a FIFO
    removed) like a ``with Server()`` block, not left to the finalizer."""
    server = _default_server
    if server is not None:
        server.close()


atexit.register(_close_default)  # after client.py's: runs before it
_connect_lock = threading.Lock()
_default: Client | None = None  # the pool connect() established for this process
_default_server: Server | None = None  # ours, when we created it
_default_jobs: int | None = None  # the jobs= that established it


def connect(jobs: int | None = None) -> Client:
    """The pool this process uses (``client=None`` everywhere means it).

    The first call establishes it:

    - ``jobs`` None: the inherited jobserver when there is a usable one; a
      jobserver named but unusable (fds closed because the make recipe lacks
      ``+``, make's ``-2,-2``, a pipe on Windows) gives a pool of 1, one job
      at a time as make does, with a JobserverWarning saying why and the
      fix; none named gives a private Server of os.cpu_count() slots.
    - ``jobs=N``: a private Server of N slots; a JobserverWarning when this
      leaves a usable inherited jobserver (make's "-jN forced in submake").

    Later calls return the same pool; ``connect(jobs=M)`` asking for a
    different size warns (JobserverWarning) and still returns it: one
    process, one pool (create a ``fastjob.Server(M)`` for a second one).
    """
    global _default, _default_server, _default_jobs
    if jobs is not None:
        if isinstance(jobs, bool) or not isinstance(jobs, int):
            raise TypeError(f"jobs must be an int or None, not {type(jobs).__name__}")
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1 (got {jobs}): a pool needs one slot")
    with _connect_lock:
        current = _default
        if current is not None and not current.closed:
            if jobs is not None and jobs != _default_jobs and jobs != current.jobs:
                size = f"{current.jobs} slots" if current.jobs is not None else "its size"
                warn_at_caller(
                    f"connect(jobs={jobs}): this process already uses a pool "
                    f"({current!r}, {size}), established by its first connect(); "
                    "returning that pool, not a second one (one process, one pool). "
                    f"Create fastjob.Server({jobs}) yourself if you really want another",
                    JobserverWarning,
                )
            return current
        server: Server | None = None
        if jobs is None:
            found = inspect_env()
            if found.client is not None:
                client = found.client
            else:
                if found.problem is not None:
                    warn_at_caller(found.problem, JobserverWarning)
                    server = Server(1)
                else:
                    server = Server(None)
                client = server.client
        else:
            var = usable_jobserver()
            if var is not None:
                warn_at_caller(
                    f"connect(jobs={jobs}) forced: leaving the jobserver inherited in "
                    f"{var} for a new pool of {jobs} (as make's \"-j{jobs} forced in "
                    "submake\"); call connect() without jobs to stay in it",
                    JobserverWarning,
                )
            server = Server(jobs)
            client = server.client
        _default, _default_server, _default_jobs = client, server, jobs
        return client
