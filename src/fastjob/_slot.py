"""The token a JobGroup task already holds, so run_process inside it uses
that slot for its child instead of taking a second one (which would
deadlock a full group: every slot held by a task waiting for another)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._core.token import Token
    from .client import Client


class TaskSlot:
    """One JobGroup task's token; ``busy`` while a child process uses it."""

    __slots__ = ("client", "token", "busy")

    def __init__(self, client: Client, token: Token) -> None:
        self.client = client
        self.token = token
        self.busy = False


current_slot: ContextVar[TaskSlot | None] = ContextVar("fastjob_task_slot", default=None)


@asynccontextmanager
async def child_slot(client: Client) -> AsyncIterator[None]:
    """Hold a slot for one child: the enclosing JobGroup task's token when it
    is free (tasks started inside the task inherit it, so only one child at
    a time may borrow it), else a token of its own."""
    slot = current_slot.get()
    if slot is not None and slot.client is client and not slot.busy and not slot.token.released:
        slot.busy = True
        try:
            yield
        finally:
            slot.busy = False
        return
    async with client.token():
        yield


def default_client() -> Client:
    """``client=None``: the enclosing JobGroup task's client, else the
    process's pool (:func:`fastjob.connect`)."""
    slot = current_slot.get()
    if slot is not None:
        return slot.client
    from ._discovery import connect

    return connect()


def resolve_client(client: object) -> Client:
    """What a ``client=`` argument means: None is :func:`default_client`, a
    Server stands for its ``.client``; anything else but a Client is a
    TypeError now (not an AttributeError later, inside a task group)."""
    from .client import Client
    from .server import Server

    if client is None:
        return default_client()
    if isinstance(client, Server):
        return client.client
    if isinstance(client, Client):
        return client
    raise TypeError(
        f"client must be a fastjob.Client, a fastjob.Server or None, not {type(client).__name__}"
    )
