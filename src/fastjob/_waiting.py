"""The wait glue between a Client's queue and the things that wake it.

* ``Waiter``: one acquire waiting for ``need`` slots (thread: a held lock;
  asyncio: a bare future; trio: an anyio.Event), and ``LoopState``, the
  waiters of one loop with its leader (trio and the led strategies).
* ``AioFdWatch``: on asyncio/uvloop, one ``add_reader`` per fd per loop whose
  callback reads for the queue; ``FdWatch``: one ``anyio.wait_readable`` per
  fd per loop for the led strategies.
* ``ExclusiveWait``: the thread leader's EPOLLEXCLUSIVE wait (Linux).

The queue itself (who is served, in what order) is ``WaiterQueue``
(``fastjob._core.queue``), what a waiter that leaves hands on is the
Client's (``fastjob/client.py``); this module only waits and wakes.
"""

from __future__ import annotations

import _thread
import os
from collections import deque
from itertools import islice as _islice

from ._errors import JobserverError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)

if TYPE_CHECKING:
    import weakref
    from typing import Any, Callable, Protocol

    import anyio

    from ._core.queue import WaiterQueue
    from ._core.token import Token

    class QueueOwner(Protocol):
        """What AioFdWatch needs of a Client."""

        _closed: bool
        _dead: JobserverError | None
        _queue: WaiterQueue

        def _pump(self) -> bool: ...

        def _hand_on_wake(self) -> None: ...

        def _fail(self, error: JobserverError) -> None: ...


class ReentrantWait(RuntimeError):
    """acquire_blocking() re-entered on a thread that waits already."""


def wake_up_pipe(what: str) -> tuple[int, int]:
    """A non-blocking pipe that wakes a waiting thread; out of fds, one
    JobserverError that names the fix."""
    try:
        r, w = os.pipe()
    except OSError as exc:
        raise JobserverError(
            f"cannot wait for a jobserver token: no file descriptor is free for {what} "
            f"({exc.strerror}); close some files or raise the limit (ulimit -n)"
        ) from None
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def poke(pipe: tuple[int, int], what: bytes) -> None:
    """Wake whoever waits on a wake-up pipe (a full pipe wakes them already;
    a closed one has nobody left to wake)."""
    try:
        os.write(pipe[1], what)
    except OSError:
        pass


class ExclusiveWait:
    """The thread leader's wait on Linux: a private epoll set holding the
    pool's fd with EPOLLEXCLUSIVE and the wake-up pipe without.  A token
    written to the pool then wakes one waiting process of those that wait
    this way, not all of them (a plain poll wakes every one, and all but one
    find the pipe empty).  Hand-on rule: a leader woken for a byte always
    reads it (and hands it on, or writes it back) or, leaving instead, reads
    and places it in _abandon, so that the wake the kernel gave it alone is
    never dropped.  (An event loop cannot use this: a private epoll fd added
    to the loop's own epoll is a nested wait, and the kernel wakes every
    nested exclusive waiter.)"""

    __slots__ = ("_ep", "_fd", "_wake_r", "epfd")

    def __init__(self, fd: int, wake_r: int) -> None:
        import select

        ep = select.epoll(2)
        try:
            ep.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            ep.register(wake_r, select.EPOLLIN)
        except BaseException:
            ep.close()
            raise
        self._ep = ep
        self._fd = fd
        self._wake_r = wake_r
        self.epfd = ep.fileno()  # for the core's own wait (Core.solo_wait)

    @staticmethod
    def usable() -> bool:
        import select

        return hasattr(select, "EPOLLEXCLUSIVE")

    def wait(self, timeout: float | None) -> int:
        """1: the pool's fd is readable (first, so a wake is never left
        unread), 2: the wake-up pipe is, 0: timeout.  A signal's handler runs
        here; if it raises, so does this (PEP 475 retries otherwise)."""
        events = self._ep.poll(-1 if timeout is None else max(0.0, timeout), 2)
        r = 0
        for fd, _ in events:
            if fd == self._fd:
                return 1
            r = 2
        return r

    def close(self) -> None:
        self._ep.close()


#: how much of a loop's queue LoopState.first copies before the rest
_HEAD = 8


class LoopState:
    """Per event loop: its waiters in order, and the leader's wait scope."""

    __slots__ = ("queue", "leader", "scope")

    def __init__(self) -> None:
        self.queue: deque[weakref.ref[Waiter]] = deque()
        self.leader: Waiter | None = None
        self.scope: anyio.CancelScope | None = None

    def prune(self) -> None:
        """Drop the gone and the dead from the head of this loop's queue."""
        sq = self.queue
        while sq:
            x = sq[0]()
            if x is not None and not x.gone:
                break
            sq.popleft()

    def first(self, skip: Waiter | None = None) -> Waiter | None:
        """The oldest live waiter of this loop (other than skip), or None."""
        # A copy (made in one C call, the GIL held): callers look without
        # the client's lock, while the reader thread's hand-off may prune
        # this queue ("deque mutated during iteration", trio + thread).
        # Of the head only: the whole queue, copied on every wake, made a
        # wake with 10,000 waiters 8x one with a single waiter on trio.
        sq = self.queue
        for ref in tuple(_islice(sq, _HEAD)):
            w = ref()
            if w is not None and not w.gone and w is not skip:
                return w
        if len(sq) <= _HEAD:
            return None
        for ref in tuple(sq):  # (a head of the gone: rare, prune() drops them)
            w = ref()
            if w is not None and not w.gone and w is not skip:
                return w
        return None


class Waiter:
    """One acquire waiting in the queue for ``need`` slots."""

    __slots__ = (
        "need", "got", "done", "gone", "error", "lock", "event", "loop", "state", "thread",
        "call", "ref", "__weakref__",
    )

    def __init__(self, need: int) -> None:
        self.need = need
        self.got: list[Token] = []
        self.done = False  # has all it needs (and is out of the queue)
        self.gone = True  # not (or no longer) in the queue
        self.error: BaseException | None = None
        self.lock: Any = None  # thread waiter: a held lock, released to wake it
        # task waiter: on asyncio a bare future of its loop (set to wake it;
        # a fresh one per wait), on trio an anyio.Event
        self.event: Any = None
        self.loop: Any = None  # the asyncio loop (None on trio)
        self.state: LoopState | None = None
        self.thread = 0
        self.call: Callable[[Callable[[], Any]], Any] | None = None
        self.ref: weakref.ref[Waiter] | None = None

    def wake(self) -> None:
        """Wake the waiter from any thread (it checks done and error)."""
        lock = self.lock
        if lock is not None:
            try:
                lock.release()
            except RuntimeError:
                pass  # woken already, not yet looked
        elif self.event is not None:
            if _thread.get_ident() == self.thread:
                ev = self.event
                if self.loop is not None and self.state is None:
                    if not ev.done():  # asyncio, no leader: the common hand-off
                        ev.set_result(None)
                    return
                self.wake_in_loop()
            else:
                loop = self.loop
                call = loop.call_soon_threadsafe if loop is not None else self.call
                try:
                    if call is not None:
                        call(self.wake_in_loop)
                except RuntimeError:
                    pass  # that loop has ended; its waiter is gone with it

    def wake_in_loop(self) -> None:
        ev = self.event
        assert ev is not None
        if self.loop is not None:
            if not ev.done():
                ev.set_result(None)
        else:
            ev.set()
        st = self.state
        if st is not None and st.leader is self and st.scope is not None:
            st.scope.cancel()


class FdWatch:
    """One wait registration per fd per event loop: the first waiter on an fd
    registers it, the others (other Clients of the same shared fd) wait for
    it to return (anyio allows one waiter per fd)."""

    watches: dict[tuple[object, int], anyio.Event] = {}

    @classmethod
    async def wait_readable(cls, key: object, fd: int) -> None:
        import anyio

        k = (key, fd)
        ev = cls.watches.get(k)
        if ev is not None:
            await ev.wait()
            return
        ev = cls.watches[k] = anyio.Event()
        try:
            await anyio.wait_readable(fd)
        finally:
            if cls.watches.get(k) is ev:
                del cls.watches[k]
            ev.set()


class AioFdWatch:
    """asyncio (and uvloop): one ``add_reader`` per fd per loop, shared by
    every Client of that fd on that loop and kept while any of them has a
    waiter queued.  The callback reads the token itself (``Client._pump``:
    one read, handed to the head of that client's queue, whose future it
    sets), so a hand-off costs one callback and one task step, with no
    leader task, no cancel scope and no re-registration per token; a loop
    that lost the race for a byte runs one callback that reads nothing.

    On asyncio's own epoll selector the fd is in the loop's epoll set with
    EPOLLEXCLUSIVE, so that a token written to the pool wakes one waiting
    loop of all the processes that wait this way, not every one (the loop
    thread waits on that epoll set itself: not a nested wait).  Hand-on
    rule, as for the thread leader: a registration that goes away reads the
    byte it may have been woken alone for and hands it on (or back), and
    its callback, finding nobody waiting, does the same.  (uvloop keeps its
    epoll fd to itself: there every waiting loop is woken.)"""

    waiting: dict[tuple[Any, int], list[QueueOwner]] = {}
    # registrations whose last waiter was just served: dropped on the next
    # loop iteration unless a waiter queued again (a task that takes tokens
    # in a loop re-queues in the very step its hand-off wakes)
    idle: set[tuple[Any, int]] = set()
    # registrations in the loop's epoll set with EPOLLEXCLUSIVE
    exclusive: set[tuple[Any, int]] = set()

    @classmethod
    def join(cls, loop: Any, fd: int, client: QueueOwner) -> None:
        k = (loop, fd)
        clients = cls.waiting.get(k)
        if clients is not None:
            if client not in clients:
                clients.append(client)
            return
        from . import _io

        # Signals blocked: the loop's registration and our record of it
        # change together.  (A handler raising in between would leave a
        # record with no registration, its waiters asleep for good, or an
        # exclusive registration not marked as one, whose leave would skip
        # the hand-on.)
        level = _io.signal_level()
        try:
            _io.block_signals()
            loop.add_reader(fd, cls._ready, k)
            cls.waiting[k] = [client]
            if _EXCLUSIVE and _make_exclusive(loop, fd):
                cls.exclusive.add(k)
        finally:
            _io.restore_signals(level)

    @classmethod
    def leave(cls, loop: Any, fd: int, client: QueueOwner) -> None:
        k = (loop, fd)
        clients = cls.waiting.get(k)
        if clients is None:
            return
        if len(clients) > 1 or clients[0] is not client:
            try:
                clients.remove(client)
            except ValueError:
                pass
            return
        from . import _io

        # Signals blocked: the record, the registration and its hand-on go
        # together.  (A record left with no client would make the callback
        # find nobody to read for while a byte sits in the pipe: a spin.)
        level = _io.signal_level()
        try:
            _io.block_signals()
            del cls.waiting[k]
            loop.remove_reader(fd)  # first: a byte handed back must not wake this loop
            if k in cls.exclusive:
                cls.exclusive.discard(k)
                cls._hand_on(client, fd)
        finally:
            _io.restore_signals(level)

    @staticmethod
    def _hand_on(client: QueueOwner, fd: int) -> None:
        """The registration is gone: a byte the kernel may have woken this
        loop alone for is read, and goes to a waiter of client or back to
        the pool (where its write wakes the next waiting process)."""
        if client._closed or client._dead is not None:
            return  # its fd is closed (or dead): nothing to read
        from . import _io

        try:
            if _io.available(fd) > 0:  # one ioctl when the pool is empty (the contended case)
                client._hand_on_wake()
        except JobserverError as exc:
            client._fail(exc)
        except OSError as exc:
            client._fail(JobserverError(f"jobserver read failed: {exc}"))

    @classmethod
    def _ready(cls, k: tuple[Any, int]) -> None:
        loop, fd = k
        for c in list(cls.waiting.get(k, ())):
            if c._closed or c._dead is not None or not c._queue.nwait:
                # nobody of it queues (served waiters leave on resuming):
                # a byte left in the pipe must not call us back in a spin
                # (the last one to leave hands the byte on)
                cls.leave(loop, fd, c)
                continue
            try:
                if c._pump():
                    if not c._queue.nwait:
                        cls.idle_soon(loop, fd)
                    return  # one token per call: the fd is level-triggered
            except JobserverError as exc:
                c._fail(exc)  # the pool is dead: every waiter hears it
                cls.leave(loop, fd, c)
            except OSError as exc:
                c._fail(JobserverError(f"jobserver read failed: {exc}"))
                cls.leave(loop, fd, c)

    @classmethod
    def idle_soon(cls, loop: Any, fd: int) -> None:
        """Nobody queues now: drop the registration on the next iteration
        unless somebody queues again by then."""
        k = (loop, fd)
        if k in cls.waiting and k not in cls.idle:
            cls.idle.add(k)
            loop.call_soon(cls._drop_idle, k)

    @classmethod
    def _drop_idle(cls, k: tuple[Any, int]) -> None:
        cls.idle.discard(k)
        for c in list(cls.waiting.get(k, ())):
            if c._closed or not c._queue.nwait:
                cls.leave(k[0], k[1], c)

    @classmethod
    def forget_client(cls, client: QueueOwner) -> None:
        """client is closing: its registrations go before its fd does (a
        registration left for a closed fd would be a stale entry in the
        loop's selector, and a new file given the same number would never be
        watched).  On another thread's loop: asked of that loop."""
        import asyncio

        here = asyncio._get_running_loop()
        for k, clients in list(cls.waiting.items()):
            if client not in clients:
                continue
            loop, fd = k
            if loop is here:
                cls.leave(loop, fd, client)
                continue
            try:
                loop.call_soon_threadsafe(cls.leave, loop, fd, client)
            except RuntimeError:  # that loop is closed: nothing to unregister from
                clients.remove(client)
                if not clients:
                    del cls.waiting[k]

    @classmethod
    def after_fork(cls) -> None:
        cls.waiting.clear()  # the parent's loops: unusable here
        cls.idle.clear()
        cls.exclusive.clear()


_EXCLUSIVE = ExclusiveWait.usable()


def _make_exclusive(loop: Any, fd: int) -> bool:
    """Re-add fd (just added with add_reader; the caller blocked signals)
    to the loop's own epoll set with EPOLLEXCLUSIVE; False where the loop
    is not asyncio's epoll selector, or the kernel refuses (the plain
    registration stays)."""
    import select

    sel = getattr(loop, "_selector", None)
    if sel is None or type(sel).__name__ != "EpollSelector":
        return False
    ep = getattr(sel, "_selector", None)
    if type(ep) is not select.epoll:
        return False
    key = sel.get_map().get(fd)
    if key is None or key.events != 1:  # selectors.EVENT_READ only: never drop a writer's EPOLLOUT
        return False
    # (The caller blocked signals: a handler raising between the two calls
    # would leave the fd out of the loop's epoll set for good, the selector
    # still listing it, and its waiters asleep forever.)
    try:
        ep.unregister(fd)
    except OSError:
        return False
    try:
        # (a byte written in between is not missed: the add looks at the pipe)
        ep.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        return True
    except OSError:
        ep.register(fd, select.EPOLLIN)
        return False
