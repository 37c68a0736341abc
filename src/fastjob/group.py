"""JobGroup: an anyio task group whose tasks each hold a token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .client import Client
from .server import Server
from ._slot import TaskSlot, current_slot, resolve_client
from ._core.token import Token

__all__ = ["JobGroup"]


class JobGroup:
    """``async with JobGroup(client, limit=None) as group:``

    ``await group.spawn(fn, *args)`` waits for a token (backpressure: a
    producer never runs ahead of the pool) then starts ``fn`` holding it;
    ``group.start_soon(fn, *args)`` returns at once and the task waits for
    its own token.  ``limit`` caps this group below the jobserver.  The first
    exception cancels the rest, as in an anyio task group; every token comes
    back.
    """

    def __init__(self, client: Client | Server | None = None, limit: int | None = None) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive int or None, not {limit!r}")
        # A wrong type fails here, not later inside the task group.
        self._client = None if client is None else resolve_client(client)
        self._limit = limit
        self._sem = anyio.Semaphore(limit) if limit is not None else None
        self._tg: TaskGroup | None = None
        self.started = 0

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = resolve_client(None)
        return self._client

    async def __aenter__(self) -> JobGroup:
        self.client  # noqa: B018 - resolve connect() before any task starts
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None

    def _group(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError("use the JobGroup inside 'async with'")
        return self._tg

    async def _slot(self) -> Token:
        if self._sem is not None:
            await self._sem.acquire()
        try:
            return await self.client.acquire()
        except BaseException:
            if self._sem is not None:
                self._sem.release()
            raise

    async def _run(self, tok: Token, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        # run_process/open_process in this task use this token for the child
        current_slot.set(TaskSlot(self.client, tok))
        try:
            await fn(*args)
        finally:
            tok.release()
            if self._sem is not None:
                self._sem.release()

    async def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: object = None) -> None:
        """Wait for a token, then start ``fn(*args)`` holding it."""
        tg = self._group()
        tok = await self._slot()
        self.started += 1
        tg.start_soon(self._run, tok, fn, args, name=name)

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: object = None) -> None:
        """Start a task now that waits for its own token, then runs ``fn``."""
        self._group().start_soon(self._acquire_and_run, fn, args, name=name)

    async def _acquire_and_run(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        tok = await self._slot()
        self.started += 1
        await self._run(tok, fn, args)
