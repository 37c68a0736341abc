"""JobGroup: an anyio task group whose tasks each hold a token."""

from __future__ import annotations

from collections import deque
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

#: Seconds a slot freed by a job of a JobGroup while no spawner waited is
#: kept for the group's next spawn before it goes back to the pool.
SPARE_GRACE = 0.001


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
        # Slots handed to tasks that have not run their first step yet: a
        # task cancelled before it starts never runs its finally, so the
        # group gives these back when it ends.
        self._unstarted: dict[int, Token | TokenSet] = {}
        # The hand-off (asyncio, weight 1, no limit): spawners waiting for a
        # slot while jobs of this group run wait on a future each; a job that
        # ends gives its token straight to the oldest of them.  One watcher
        # task waits in the client's queue meanwhile, for tokens freed by
        # anyone else (other processes, other tasks of this one).
        self._running = 0  # jobs of this group holding a slot
        self._wants: deque[Any] = deque()  # asyncio futures of waiting spawners
        self._open = False  # the body of 'async with' is still running
        self._watching = False  # the watcher task was started and has not ended
        self._watcher_scope: anyio.CancelScope | None = None
        # Slots freed while no spawner waited, kept SPARE_GRACE seconds for
        # the next spawn (which usually comes at once), then released.
        self._spares: list[Token] = []
        self._spare_timer: Any = None
        self._watcher_need: Any = None  # the idle watcher's future
        self._watcher_queued = False  # the watcher is inside client.acquire()

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = resolve_client(None)
        return self._client

    async def __aenter__(self) -> JobGroup:
        self.client  # noqa: B018 - resolve connect() before any task starts
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        self._open = False
        self._drop_spares()
        self._end_watcher()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None
            self._release_unstarted()

    def _start(self, slot: Token | TokenSet, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
               name: object) -> None:
        """Start a task running fn holding slot; the slot is the group's
        until the task's first step."""
        self.started += 1
        self._unstarted[id(slot)] = slot
        try:
            self._group().start_soon(self._run, slot, fn, args, name=name)
        except BaseException:
            del self._unstarted[id(slot)]
            slot.release()
            if self._sem is not None:
                self._sem.release()
            raise

    def _release_unstarted(self) -> None:
        """The task group is over: slots of tasks that never ran go back."""
        unstarted, self._unstarted = list(self._unstarted.values()), {}
        for slot in unstarted:
            try:
                slot.release()
            finally:
                if self._sem is not None:
                    self._sem.release()

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
        self._unstarted.pop(id(slot), None)  # ours from here (finally below)
        # run_process/open_process in this task use this slot for the child
        first = slot if isinstance(slot, Token) else next(iter(slot))
        current_slot.set(TaskSlot(self.client, first))
        self._running += 1
        try:
            await fn(*args)
        finally:
            self._running -= 1
            if slot is first and (self._wants or (self._watching and self._open)):
                self._give(first)
            else:
                slot.release()
            if self._sem is not None:
                self._sem.release()

    # -- the hand-off (asyncio) ----------------------------------------------------
    def _others_wait(self) -> bool:
        """True when a waiter of the client other than this group's watcher
        is queued: a freed token is then the client's to hand out (first
        come, first served), not ours.  Unknown (another core) counts as yes."""
        # Queued waiters only (served ones about to resume wait for nothing),
        # the thread waiting alone in the core included.
        count = getattr(self._client, "_queued_waiters", None)
        if count is None:
            return True
        return bool(count() > (1 if self._watcher_queued else 0))

    def _give(self, tok: Token) -> bool:
        """A freed slot of this group: to the oldest waiting spawner, when
        nobody else of the process waits (True); else back to the client
        (False)."""
        try:
            if not self._others_wait():
                wants = self._wants
                while wants:
                    fut = wants.popleft()
                    if not fut.done():
                        fut.set_result(tok)
                        if not self._open:
                            self._end_watcher()
                        return True
                if self._open and self._watching:
                    self._spares.append(tok)
                    if self._spare_timer is None:
                        import asyncio

                        loop = asyncio.get_running_loop()
                        self._spare_timer = loop.call_later(SPARE_GRACE, self._drop_spares)
                    return True
        except BaseException:
            tok.release()
            raise
        tok.release()
        return False

    def _take_spare(self) -> Token:
        tok = self._spares.pop()
        if not self._spares and self._spare_timer is not None:
            self._spare_timer.cancel()  # the grace starts again with the next spare
            self._spare_timer = None
        return tok

    def _drop_spares(self) -> None:
        timer, self._spare_timer = self._spare_timer, None
        if timer is not None:
            timer.cancel()
        spares, self._spares = self._spares, []
        err: BaseException | None = None
        for tok in spares:
            try:
                tok.release()
            except BaseException as exc:  # release the others first
                err = err or exc
        if err is not None:
            raise err

    def _end_watcher(self) -> None:
        """The body is over: the watcher ends once no spawner waits (it must
        not stay queued in the client, holding the group's exit)."""
        if any(not f.done() for f in self._wants):
            return
        self._wake_watcher()
        if self._watcher_scope is not None:
            self._watcher_scope.cancel()

    def _wake_watcher(self) -> None:
        need, self._watcher_need = self._watcher_need, None
        if need is not None and not need.done():
            need.set_result(None)

    async def _watch_pool(self) -> None:
        """While spawners wait: take a token from the client's queue (freed
        by anyone) and give it to the oldest of them."""
        import asyncio

        loop = asyncio.get_running_loop()
        client = self.client
        try:
            with anyio.CancelScope() as self._watcher_scope:
                while True:
                    if not any(not f.done() for f in self._wants):
                        if not self._open:
                            return
                        self._watcher_need = loop.create_future()
                        await self._watcher_need
                        continue
                    self._watcher_queued = True
                    try:
                        tok = await client.acquire()
                    finally:
                        self._watcher_queued = False
                    if not self._give(tok):
                        # Given back: another waiter of the process is first.
                        # Let it run before queueing again (the token may be
                        # free again at once, and acquire does not yield).
                        await asyncio.sleep(0)
        finally:
            self._watching = False
            self._watcher_need = None
            self._watcher_scope = None

    async def _wait_handed(self) -> Token:
        """Wait for a slot from a job of this group that ends, or from the
        watcher (started on first need)."""
        import asyncio

        fut: asyncio.Future[Token] = asyncio.get_running_loop().create_future()
        self._wants.append(fut)
        if not self._watching:
            assert self._tg is not None
            self._tg.start_soon(self._watch_pool, name="fastjob JobGroup watcher")
            self._watching = True
        else:
            self._wake_watcher()
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._give(fut.result())  # handed over as we were cancelled: pass it on
            else:
                fut.cancel()
            try:
                self._wants.remove(fut)
            except ValueError:
                pass
            raise

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
                tok = self._take_spare() if self._spares else self.client.try_acquire()
                if tok is None:
                    # Jobs of ours that will end, or the watcher already in
                    # the client's queue (which try_acquire then defers to):
                    # wait for the hand-off, not behind our own watcher.
                    if not (self._open and (self._running or self._watching)):
                        return await self._spawn_slow(fn, args, weight, name)
                    tok = await self._wait_handed()
            self._start(tok, fn, args, name)
            return
        await self._spawn_slow(fn, args, weight, name)

    async def _spawn_slow(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], weight: int, name: object
    ) -> None:
        weight = self._check_weight(weight)
        self._group()
        slot = await self._slot(weight)
        self._start(slot, fn, args, name)

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
