"""Token: one unit of the pool, held until released exactly once."""

from __future__ import annotations

import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._errors import TokenLeakWarning

if TYPE_CHECKING:
    from ..client import Client


class Token:
    """A held job slot.  ``release()`` is sync, idempotent and thread-safe and
    writes back the byte that was read; the implicit token writes nothing.

    Use it as a context manager, or release it yourself.  A Token garbage
    collected unreleased is released with a TokenLeakWarning.
    """

    __slots__ = ("_client", "_byte", "_gen", "_core", "__weakref__")

    def __init__(self, client: Client, byte: int, gen: int) -> None:
        self._client: Client | None = client
        self._byte = byte  # -1: the implicit token
        self._gen = gen
        self._core: Any = None  # the PoolCore that read it, for a fast release

    @property
    def implicit(self) -> bool:
        """True for the process's implicit token (never in the pool)."""
        return self._byte < 0

    @property
    def byte(self) -> bytes | None:
        """The byte read from the pool (echoed on release); None if implicit."""
        return None if self._byte < 0 else bytes((self._byte,))

    @property
    def released(self) -> bool:
        return self._client is None

    def release(self) -> None:
        """Give the token back (writes its byte to the pool; a no-op the
        second time)."""
        if self._client is not None:
            if self._core is not None:
                self._core.give(self)
            else:
                self._client._release(self)

    def __enter__(self) -> Token:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        client = self._client
        if client is not None:
            what = repr(self)
            # Release first: a warning turned into an error must not lose it.
            client._release(self, quiet=True)
            warnings.warn(
                f"fastjob: {what} was garbage collected without release(); "
                "it has been returned to the pool",
                TokenLeakWarning,
                stacklevel=2,
            )

    def __repr__(self) -> str:
        kind = "implicit" if self._byte < 0 else f"byte={bytes((self._byte,))!r}"
        state = "released" if self._client is None else "held"
        return f"<fastjob.Token {kind} {state}>"
