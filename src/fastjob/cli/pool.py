"""The pool a ``fastjob run`` / ``fastjob parallel`` command works in: the
inherited jobserver (joined) or a new Server, plus the end-of-run accounting
("fastjob: 2 jobserver tokens were not returned (pool 6, expected 8)")."""

from __future__ import annotations

import os
import sys

from .._discovery import find_jobserver, inspect_env, usable_jobserver
from .._errors import InvalidAuthError, JobserverError
from .._makeflags import JOBSERVER_VARIABLES, scan_makeflags
from ..server import Server

# Not typing.TYPE_CHECKING: typing and the governor stay off fastjob run's path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._governor import Limits
    from ..client import Client


def warn(message: str) -> None:
    """One line on stderr, prefixed like every fastjob message (nothing when
    fastjob was started with fd 2 closed: sys.stderr is None then)."""
    if sys.stderr is None:
        return
    sys.stderr.write(f"fastjob: {message}\n")
    sys.stderr.flush()


class Pool:
    """Where the commands get their tokens, and how a child joins.

    (A plain class with a dataclass's ``__init__``, ``__repr__`` and
    ``__eq__``: dataclasses costs milliseconds at start-up.)"""

    __hash__ = None  # type: ignore[assignment]  # mutable and compared by value, as a dataclass

    def __init__(
        self, client: Client, server: Server | None, env: dict[str, str], pass_fds: tuple[int, ...]
    ) -> None:
        self.client = client
        self.server = server
        self.env = env
        self.pass_fds = pass_fds

    def __repr__(self) -> str:
        return (
            f"Pool(client={self.client!r}, server={self.server!r}, env={self.env!r}, "
            f"pass_fds={self.pass_fds!r})"
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Pool)
        return (self.client, self.server, self.env, self.pass_fds) == (
            other.client, other.server, other.env, other.pass_fds
        )

    @property
    def joined(self) -> bool:
        """True when this is an inherited jobserver (we own nothing)."""
        return self.server is None

    def finish(self, *, report: bool = True) -> None:
        """Report missing/extra tokens the way make does, restore the pool,
        close it (removing a FIFO).  Nothing to do for a joined pool."""
        server = self.server
        if server is None:
            return
        try:
            if report:
                account(server)
        finally:
            server.close()


def account(server: Server) -> int:
    """Compare the pool with what it should hold, say so on stderr, then
    reconcile; returns the correction (> 0 missing, < 0 extra)."""
    try:
        have = server.available()
        expected = server.expected()
    except JobserverError:
        return 0
    if have < expected:
        n = expected - have
        verb = "token was" if n == 1 else "tokens were"
        warn(f"{n} jobserver {verb} not returned (pool {have}, expected {expected})")
    elif have > expected:
        n = have - expected
        verb = "token was" if n == 1 else "tokens were"
        warn(f"{n} extra jobserver {verb} found (pool {have}, expected {expected}) and removed")
    if have != expected:
        try:
            server.reconcile()
        except JobserverError:
            pass
    return expected - have


def _join_env(var: str, client: Client, environ: Mapping[str, str]) -> dict[str, str]:
    """The inherited environment, unchanged where it already names the pool
    we joined (so make's other flags and overrides survive); variables that
    name another or a broken jobserver are rewritten to name ours."""
    env = dict(environ)
    ours = client.env({})
    chosen = scan_makeflags(environ[var]).auth
    for name in JOBSERVER_VARIABLES:
        value = env.get(name)
        if value is None:
            continue
        try:
            auth = scan_makeflags(value).auth
        except InvalidAuthError:
            auth = None
        if auth is not None and chosen is not None and auth.text == chosen.text:
            continue
        if auth is not None or name == var:
            env[name] = ours[name]
    return env


def open_pool(jobs: int | None, style: str | None = None, limits: Limits | None = None) -> Pool:
    """The pool for ``fastjob run`` / ``fastjob parallel``.

    Without ``-j`` (``jobs`` None): join the inherited jobserver when it is
    usable; when one is named but unusable (or disabled with ``-2,-2``) run
    one job at a time in a pool of 1, as make does, saying why; with none
    named, a Server of CPU-count slots.  With ``-j N``: a Server of N, with
    a warning when that leaves a usable inherited jobserver.  A Server made
    here is governed by ``limits``; children find its control socket in
    FASTJOB_CONTROL.
    """
    if limits is not None and jobs is None and find_jobserver() is not None:
        raise ValueError(
            "the limits (-l, --min-free-memory, --max-pressure) govern a pool fastjob "
            "creates, and this process is inside another jobserver: give -j N as well"
        )
    if jobs is None:
        found = inspect_env()
        client = found.client
        if client is not None:
            assert found.variable is not None
            env = _join_env(found.variable, client, os.environ)
            return Pool(client, None, env, client.pass_fds)
        if found.problem is not None:
            warn(f"warning: {found.problem} ('fastjob doctor' explains)")
            jobs = 1
    else:
        var = usable_jobserver()
        if var is not None:
            warn(
                f"warning: -j{jobs} forced: leaving the jobserver inherited in {var} "
                f"for a new pool of {jobs} (as make's \"-j{jobs} forced in submake\"); "
                "drop -j to stay in it"
            )
    server = Server(jobs if jobs is not None else (os.cpu_count() or 1), style, limits=limits)
    return Pool(server.client, server, server.control_env(server.env()), server.pass_fds)
