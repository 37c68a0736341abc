"""from_env() and connect(): find the jobserver this process was given."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping

from ._errors import (
    BadFdError,
    FifoError,
    InvalidAuthError,
    JobserverClosedError,
    JobserverError,
    JobserverWarning,
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
    except JobserverError as exc:
        if strict:
            raise
        warnings.warn(str(exc), JobserverWarning, stacklevel=2)
        return None


_connect_lock = threading.Lock()
_inherited: Client | None = None
_private: dict[int | None, Server] = {}


def connect(jobs: int | None = None) -> Client:
    """The inherited jobserver if there is one, else a private Server of
    ``jobs`` (default os.cpu_count()) slots; cached per process."""
    global _inherited
    with _connect_lock:
        if _inherited is None or _inherited.closed:
            _inherited = from_env()
        if _inherited is not None:
            return _inherited
        server = _private.get(jobs)
        if server is None or server.client.closed:
            server = _private[jobs] = Server(jobs)
        return server.client
