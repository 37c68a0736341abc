"""Selects the token I/O implementation once, at import.

The native ``_fastjob`` extension is used when it was built and
``FASTJOB_NO_EXTENSIONS`` is unset; otherwise :mod:`fastjob._io_py`.
"""

from __future__ import annotations

import os
import stat
from collections import namedtuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)

NATIVE: bool
if os.environ.get("FASTJOB_NO_EXTENSIONS", "") not in ("", "0"):
    from . import _io_py as _impl

    NATIVE = False
else:
    try:
        import _fastjob as _impl  # type: ignore[no-redef]

        NATIVE = True
    except ImportError:
        from . import _io_py as _impl

        NATIVE = False

AGAIN: int = _impl.AGAIN
EOF: int = _impl.EOF
try_read = _impl.try_read
read_blocking = _impl.read_blocking
read_nowait = _impl.read_nowait
write = _impl.write
write_nowait = _impl.write_nowait
wait_readable = _impl.wait_readable
available = _impl.available
fill = _impl.fill
drain = _impl.drain
reopen_private = _impl.reopen_private
ready = _impl.ready
READ_FD: int = _impl.READ_FD
READ_NOWAIT: int = _impl.READ_NOWAIT
READ_NONE: int = _impl.READ_NONE
READ_PY: int = _impl.READ_PY
WRITE_FD: int = _impl.WRITE_FD
WRITE_NOWAIT: int = _impl.WRITE_NOWAIT
WRITE_LOCKED: int = _impl.WRITE_LOCKED
WRITE_PY: int = _impl.WRITE_PY
if TYPE_CHECKING:
    # Both implementations have one API; type against the pure one.
    from ._io_py import Core as Core
    from ._io_py import Token as Token
    from ._io_py import TokenContext as TokenContext
    from ._io_py import TokenContexts as TokenContexts
else:
    Token = _impl.Token
    Core = _impl.Core
    TokenContext = _impl.TokenContext
    TokenContexts = _impl.TokenContexts

from ._errors import TokenLeakWarning as _TokenLeakWarning  # noqa: E402

_impl._set_leak_warning(_TokenLeakWarning)

# The slow paths of the client block signals around their critical sections
# whichever core is in use (the native fast path needs no such help): the
# native core's pair is two rt_sigprocmask calls; the pure one goes through
# ctypes.
# ``level = signal_level(); try: block_signals(); ... finally:
# restore_signals(level)``: see _fastjob.signal_level.
if hasattr(_impl, "signal_level"):
    signal_level = _impl.signal_level
    block_signals = _impl.block_signals
    restore_signals = _impl.restore_signals
else:  # a native core built before it had them: the three of the pure core
    from ._io_py import block_signals as block_signals  # noqa: E402
    from ._io_py import restore_signals as restore_signals  # noqa: E402
    from ._io_py import signal_level as signal_level  # noqa: E402


if TYPE_CHECKING:
    from typing import NamedTuple

    class _FdFields(NamedTuple):
        mode: int
        dev: int
        ino: int
        uid: int
        fl_flags: int
        fd_flags: int

else:  # typing.NamedTuple's class, without importing typing (start-up)
    _FdFields = namedtuple("FdInfo", ("mode", "dev", "ino", "uid", "fl_flags", "fd_flags"))


class FdInfo(_FdFields):
    """What an fd is: file type, pipe identity, access mode and flags."""

    __slots__ = ()

    @property
    def is_fifo(self) -> bool:
        return stat.S_ISFIFO(self.mode)

    @property
    def access(self) -> int:
        """os.O_RDONLY, os.O_WRONLY or os.O_RDWR."""
        return self.fl_flags & os.O_ACCMODE

    @property
    def readable(self) -> bool:
        return self.access in (os.O_RDONLY, os.O_RDWR)

    @property
    def writable(self) -> bool:
        return self.access in (os.O_WRONLY, os.O_RDWR)

    @property
    def nonblocking(self) -> bool:
        return bool(self.fl_flags & os.O_NONBLOCK)

    @property
    def cloexec(self) -> bool:
        return bool(self.fd_flags & 1)  # FD_CLOEXEC

    @property
    def kind(self) -> str:
        """A word for the file type, as a person would say it."""
        m = self.mode
        if stat.S_ISFIFO(m):
            return "pipe"
        if stat.S_ISREG(m):
            return "regular file"
        if stat.S_ISDIR(m):
            return "directory"
        if stat.S_ISSOCK(m):
            return "socket"
        if stat.S_ISCHR(m):
            return "character device (tty or device)"
        if stat.S_ISBLK(m):
            return "block device"
        if stat.S_ISLNK(m):
            return "symlink"
        return "file of unknown type"  # read as "is a file of unknown type"


def fd_info(fd: int) -> FdInfo:
    """fstat + F_GETFL + F_GETFD of fd; OSError (EBADF) when it is closed."""
    return FdInfo(*_impl.fd_info(fd))


