"""Token and TokenSet: held job slots, each released exactly once.

Token is the core's own class (native ``_fastjob.Token`` or its pure twin in
``fastjob._io_py``): it keeps its byte and the core that holds it, and its
release is one call into the core.  TokenSet holds the slots of a weighted
or elastic acquire.
"""

from __future__ import annotations

import threading
import warnings
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Iterator
from types import TracebackType

from .._errors import TokenLeakWarning
from .._io import Token

__all__ = ["Token", "TokenSet"]


class _EmptyTokenSet(KeyError, IndexError):
    """pop() from an empty TokenSet (a KeyError as set.pop raises, and an
    IndexError as list.pop raises)."""


class TokenSet:
    """The slots of one weighted (``acquire_many``) or elastic
    (``acquire_up_to``) acquire.

    ``len()`` is the number of slots held; iterating gives the Tokens;
    ``pop()`` hands one Token to the caller (who releases it);
    ``release()`` gives every slot back (idempotent, thread-safe).  Use it
    with ``with`` or ``async with``.  A TokenSet garbage collected unreleased
    is released with a TokenLeakWarning.
    """

    __slots__ = ("_tokens", "_lock", "__weakref__")

    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = tokens
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tokens)

    def __iter__(self) -> Iterator[Token]:
        return iter(list(self._tokens))

    def __bool__(self) -> bool:
        return bool(self._tokens)

    @property
    def released(self) -> bool:
        """True when the set holds no slot any more."""
        return not self._tokens

    def pop(self) -> Token:
        """Remove one Token from the set and give it to the caller."""
        with self._lock:
            if not self._tokens:
                raise _EmptyTokenSet("pop from an empty TokenSet")
            return self._tokens.pop()

    def release(self) -> None:
        """Give every slot back (a no-op the second time)."""
        with self._lock:
            tokens, self._tokens = self._tokens, []
        error: BaseException | None = None
        for tok in tokens:
            try:
                tok.release()
            except Exception as exc:  # noqa: BLE001 - release the rest, then raise
                error = error or exc
        if error is not None:
            raise error

    def __enter__(self) -> TokenSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> TokenSet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        tokens = [t for t in getattr(self, "_tokens", ()) if not t.released]
        if not tokens:
            return
        n = len(tokens)
        self._tokens = []
        for tok in tokens:
            try:
                tok.release()
            except Exception:  # noqa: BLE001, S110 - the pool is gone: nothing to give back to
                pass
        warnings.warn(
            f"fastjob: a TokenSet of {n} slot(s) was garbage collected without "
            "release(); they have been returned to the pool",
            TokenLeakWarning,
            stacklevel=2,
        )

    def __repr__(self) -> str:
        return f"<fastjob.TokenSet of {len(self._tokens)} slot(s)>"
