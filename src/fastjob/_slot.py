"""The token a JobGroup task already holds, so run_process inside it uses
that slot for its child instead of taking a second one (which would
deadlock a full group: every slot held by a task waiting for another)."""

from __future__ import annotations

from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, cast

from ._discovery import connect
from .client import Client
from .server import Server

if TYPE_CHECKING:
    from ._core.token import Token


class TaskSlot:
    """One JobGroup task's token; ``busy`` while a child process uses it."""

    __slots__ = ("client", "token", "busy")

    def __init__(self, client: Client, token: Token) -> None:
        self.client = client
        self.token = token
        self.busy = False


current_slot: ContextVar[TaskSlot | None] = ContextVar("fastjob_task_slot", default=None)


class _Weighted(Protocol):
    """Client.acquire_many (weighted acquire; returns a TokenSet)."""

    async def acquire_many(self, n: int) -> _Releasable: ...


class _Releasable(Protocol):
    def release(self) -> None: ...


def check_weight(weight: object, client: Client) -> int:
    """``weight`` as a slot count: a positive int, at most the pool's size
    when that is known (more could never be granted)."""
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        raise ValueError(f"weight must be a positive int (slots the job takes), not {weight!r}")
    if client.jobs is not None and weight > client.jobs:
        raise ValueError(f"weight={weight} is more than the pool's {client.jobs} slots: it could never run")
    return weight


class child_slot:
    """``async with child_slot(client, weight):`` hold ``weight`` slots for
    one child.  Inside a JobGroup task of the same client, the task's token
    is one of them when it is free (tasks started inside the task inherit
    it, so only one child at a time may borrow it); the rest are taken from
    the client: one Token, or a TokenSet (``acquire_many``) for weight > 1.
    A plain class (not a generator) to keep the per-child cost down."""

    __slots__ = ("_client", "_weight", "_borrowed", "_held")

    def __init__(self, client: Client, weight: int = 1) -> None:
        self._client = client
        self._weight = weight
        self._borrowed: TaskSlot | None = None
        self._held: Token | _Releasable | None = None

    async def __aenter__(self) -> None:
        client = self._client
        slot = current_slot.get()
        if slot is not None and slot.client is client and not slot.busy and not slot.token.released:
            slot.busy = True
            self._borrowed = slot
        try:
            if self._weight == 1:
                if self._borrowed is None:
                    self._held = await client.acquire()
            else:
                n = self._weight - (self._borrowed is not None)
                self._held = await cast(_Weighted, client).acquire_many(n)
        except BaseException:
            self._give_back()
            raise

    def _give_back(self) -> None:
        held, self._held = self._held, None
        try:
            if held is not None:
                held.release()
        finally:
            if self._borrowed is not None:
                self._borrowed.busy = False
                self._borrowed = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._give_back()


def default_client() -> Client:
    """``client=None``: the enclosing JobGroup task's client, else the
    process's pool (:func:`fastjob.connect`)."""
    slot = current_slot.get()
    if slot is not None:
        return slot.client
    return connect()


def resolve_client(client: object) -> Client:
    """What a ``client=`` argument means: None is :func:`default_client`, a
    Server stands for its ``.client``; anything else but a Client is a
    TypeError now (not an AttributeError later, inside a task group)."""
    if type(client) is Client:
        return client
    if client is None:
        return default_client()
    if isinstance(client, Server):
        return client.client
    if isinstance(client, Client):
        return client
    raise TypeError(
        f"client must be a fastjob.Client, a fastjob.Server or None, not {type(client).__name__}"
    )
