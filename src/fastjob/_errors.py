"""Error and warning kinds.  Each error names what was found, why it is
unusable and how to fix it (the Rust ``jobserver`` crate's model)."""

from __future__ import annotations


class JobserverError(Exception):
    """Base class: a jobserver was named but cannot be used, or stopped working."""


class InvalidAuthError(JobserverError, ValueError):
    """The MAKEFLAGS text does not parse as a jobserver option."""


class BadFdError(JobserverError):
    """A jobserver fd is closed, or open with the wrong access mode."""


class NotAPipeError(BadFdError):
    """A jobserver fd is open but is not a pipe (reused for another file)."""


class PipeMismatchError(BadFdError):
    """The read and write fds are not the two ends of one pipe."""


class FifoError(JobserverError):
    """A ``fifo:PATH`` jobserver cannot be opened (missing, not a FIFO, denied)."""


class ForeignFifoError(FifoError):
    """The FIFO belongs to another user; refused unless allowed explicitly."""


class JobserverClosedError(JobserverError):
    """The pool is gone: every writer closed it (EOF) or its owner exited."""

    #: the token core tells "nothing to give a token back to" by this mark
    pool_gone = True


class UnsupportedPlatformError(JobserverError):
    """The jobserver style does not exist on this platform."""


class JobserverWarning(UserWarning):
    """A jobserver is named in the environment but cannot be used."""


class TokenLeakWarning(UserWarning):
    """A token was never released, or a pool is short of tokens at close (or
    holds more than it was made with)."""


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """warnings.warn pointing at the first frame outside the fastjob package
    (the user's line), however deep inside fastjob the warning is raised."""
    import os
    import sys
    import warnings

    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    level = 1
    frame = sys._getframe(0)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)
