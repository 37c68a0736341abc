"""JobGroup: an anyio task group whose tasks each hold a token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from . import _backend
from .client import Client
from .server import Server
from ._slot import TaskSlot, current_slot, resolve_client
from ._core.token import Token, TokenSet

__all__ = ["JobGroup"]


class JobGroup:
    """``async with JobGroup(client, limit=None) as group:``

    ``await group.spawn(fn, *args, weight=1)`` waits for ``weight`` slots
    (backpressure: a producer never runs ahead of the pool) then starts
    ``fn`` holding them; ``group.start_soon(fn, *args, weight=1)`` returns at
    once and the task waits for its own slots.  ``limit`` caps this group below the jobserver.  The first
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

    async def _slot(self, weight: int) -> Token | TokenSet:
        if self._sem is not None:
            await self._sem.acquire()
        try:
            if weight == 1:
                return await self.client.acquire()
            return await self.client.acquire_many(weight)
        except BaseException:
            if self._sem is not None:
                self._sem.release()
            raise

    async def _run(
        self, slot: Token | TokenSet, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        # run_process/open_process in this task use this slot for the child
        first = slot if isinstance(slot, Token) else next(iter(slot))
        current_slot.set(TaskSlot(self.client, first))
        try:
            await fn(*args)
        finally:
            slot.release()
            if self._sem is not None:
                self._sem.release()

    @staticmethod
    def _check_weight(weight: object) -> int:
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise TypeError(f"weight must be an int, not {type(weight).__name__}")
        if weight < 1:
            raise ValueError(f"weight must be at least 1, not {weight}")
        return weight

    async def spawn(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, weight: int = 1, name: object = None
    ) -> None:
        """Wait for ``weight`` slots, then start ``fn(*args)`` holding them."""
        if type(weight) is int and weight == 1 and self._sem is None and self._tg is not None:
            # The common case, without a coroutine or a wait: a token that is
            # free now (none while other waiters queue: they go first) is
            # taken synchronously.  On trio this is still a checkpoint.
            if _backend.is_trio():
                import trio

                await trio.lowlevel.checkpoint_if_cancelled()
                tok = self.client.try_acquire()
                if tok is None:
                    return await self._spawn_slow(fn, args, weight, name)
                try:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                except BaseException:
                    tok.release()
                    raise
            else:
                tok = self.client.try_acquire()
                if tok is None:
                    return await self._spawn_slow(fn, args, weight, name)
            self.started += 1
            try:
                self._tg.start_soon(self._run, tok, fn, args, name=name)
            except BaseException:
                tok.release()
                raise
            return
        await self._spawn_slow(fn, args, weight, name)

    async def _spawn_slow(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], weight: int, name: object
    ) -> None:
        weight = self._check_weight(weight)
        tg = self._group()
        slot = await self._slot(weight)
        self.started += 1
        try:
            tg.start_soon(self._run, slot, fn, args, name=name)
        except BaseException:
            slot.release()
            if self._sem is not None:
                self._sem.release()
            raise

    def start_soon(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, weight: int = 1, name: object = None
    ) -> None:
        """Start a task now that waits for its own ``weight`` slots, then
        runs ``fn``."""
        weight = self._check_weight(weight)
        client = self.client
        if client.jobs is not None and weight > client.jobs:
            raise ValueError(
                f"weight={weight} slots can never be free at once: the pool has only "
                f"{client.jobs} (-j{client.jobs})"
            )
        self._group().start_soon(self._acquire_and_run, fn, args, weight, name=name)

    async def _acquire_and_run(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], weight: int
    ) -> None:
        slot = await self._slot(weight)
        self.started += 1
        await self._run(slot, fn, args)
