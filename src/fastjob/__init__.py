"""fastjob: the GNU make jobserver protocol for asyncio and trio.

Join the pool that make, cargo or ninja created (``fastjob.from_env()``),
create one for children (``fastjob.Server``), and gate work on its tokens
(``await client.acquire()``, ``async with client.token()``, ``JobGroup``,
``run_process``).
"""

from __future__ import annotations

from ._discovery import connect, from_env
from ._governor import Limits
from ._pool_size import ServerStatistics
from ._errors import (
    BadFdError,
    FifoError,
    ForeignFifoError,
    InvalidAuthError,
    JobserverClosedError,
    JobserverError,
    JobserverWarning,
    NotAPipeError,
    PipeMismatchError,
    TokenLeakWarning,
    UnsupportedPlatformError,
)
from ._io import NATIVE
from ._makeflags import JobserverAuth, format_makeflags, parse_makeflags
from ._version import __version__
from .client import Client, ClientStatistics, Token
from .group import JobGroup
from .process import open_process, run_process
from .server import Server

__all__ = [
    "NATIVE",
    "BadFdError",
    "Client",
    "ClientStatistics",
    "FifoError",
    "ForeignFifoError",
    "InvalidAuthError",
    "JobGroup",
    "JobserverAuth",
    "JobserverClosedError",
    "JobserverError",
    "JobserverWarning",
    "Limits",
    "NotAPipeError",
    "PipeMismatchError",
    "Server",
    "ServerStatistics",
    "Token",
    "TokenLeakWarning",
    "UnsupportedPlatformError",
    "__version__",
    "connect",
    "format_makeflags",
    "from_env",
    "open_process",
    "parse_makeflags",
    "run_process",
]
