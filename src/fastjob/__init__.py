"""fastjob: the GNU make jobserver protocol for asyncio and trio.

Join the pool that make, cargo or ninja created (``fastjob.from_env()``),
create one for children (``fastjob.Server``), and gate work on its tokens
(``await client.acquire()``, ``async with client.token()``, ``JobGroup``,
``run_process``).

The namespace is flat and lazy: ``import fastjob`` loads only this module,
the version and the error classes; each other name is imported on first use
(PEP 562 module ``__getattr__``), so a command-line tool that only parses
MAKEFLAGS never pays for asyncio or anyio.
"""

from __future__ import annotations

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
from ._version import __version__

# Not typing.TYPE_CHECKING: importing typing alone costs more than this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    # For type checkers and IDEs: the same names, eagerly.
    from typing import Any

    from ._discovery import connect, from_env
    from ._governor import Limits
    from ._io import NATIVE
    from ._makeflags import JobserverAuth, format_makeflags, parse_makeflags
    from ._statistics import ClientStatistics, ServerStatistics
    from .client import Client, Token, TokenSet
    from .group import JobGroup
    from .process import open_process, run_process
    from .server import Server

# public name -> the submodule that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "connect": "._discovery",
    "from_env": "._discovery",
    "NATIVE": "._io",
    "JobserverAuth": "._makeflags",
    "format_makeflags": "._makeflags",
    "parse_makeflags": "._makeflags",
    "Client": ".client",
    "ClientStatistics": "._statistics",
    "Token": ".client",
    "TokenSet": ".client",
    "JobGroup": ".group",
    "open_process": ".process",
    "run_process": ".process",
    "Server": ".server",
    "Limits": "._governor",
    "ServerStatistics": "._statistics",
}
del TYPE_CHECKING


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastjob' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "TokenSet",
    "UnsupportedPlatformError",
    "__version__",
    "connect",
    "format_makeflags",
    "from_env",
    "open_process",
    "parse_makeflags",
    "run_process",
]
