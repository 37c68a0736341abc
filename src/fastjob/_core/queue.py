"""WaiterQueue: one client's first-come-first-served queue of waiters.

Threads and tasks, weighted or not, wait in one queue.  A token that someone
reads or frees goes to the head (``serve``); a weighted head keeps gathering
while those behind it wait; a waiter that has all it needs leaves the queue
but stays *served, not resumed* until it runs again, so that a newcomer on
the fast path cannot overtake it.  A waiter that gives up hands what it
gathered on (the caller does that with ``leave``'s result).

The queue holds weak references: a waiter whose owner was unwound by a
signal handler's exception before it could leave (its cleanup interrupted
too) is dropped when it reaches the head, and the slots it gathered come
back through ``sweep`` (its weak reference's callback reports its death, so
a sweep is O(deaths), not O(waiters)).

Every method runs under the client's lock with signals blocked; none
waits, wakes or writes: the client does that after the lock.

``WaiterQueue`` is the native twin (``_fastjob.WaiterQueue``, the same code
in Cython: no Python frame per hand-off, and no bytecode runs inside a
method except a trio or led waiter's ``LoopState.prune``) when the native
core is in use, else ``PyWaiterQueue``.
"""

from __future__ import annotations

import weakref
from collections import deque

from .. import _io

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)

if TYPE_CHECKING:
    from typing import Any, Protocol

    from .token import Token

    class QueuedWaiter(Protocol):
        """What the queue needs of a waiter (fastjob._waiting.Waiter)."""

        need: int
        got: list[Token]
        done: bool
        gone: bool
        ref: weakref.ref[Any] | None
        state: Any  # its loop's LoopState (prune()) or None

    class CoreCounts(Protocol):
        """The core's view of the queue: its fast path defers while nwait."""

        nwait: int


class PyWaiterQueue:
    """The waiters of one client, oldest first (see the module docstring);
    the pure twin of the native ``_fastjob.WaiterQueue``."""

    __slots__ = ("order", "pending", "resuming", "gathered", "orphans", "died", "nwait", "_core")

    def __init__(self, core: CoreCounts) -> None:
        self._core = core
        #: queued waiters, oldest first; gone or dead ones until they reach the head
        self.order: deque[weakref.ref[Any]] = deque()
        #: the queued ones (not gone): nwait counts these
        self.pending: set[weakref.ref[Any]] = set()
        #: served but not yet resumed: the fast path still defers to them
        self.resuming: set[weakref.ref[Any]] = set()
        #: what each queued or served waiter gathered, kept here too: if its
        #: owner vanishes, the slots go on from here
        self.gathered: dict[weakref.ref[Any], list[Token]] = {}
        #: slots of vanished waiters, to be placed by the caller
        self.orphans: list[Token] = []
        #: weak references of waiters that died (their callback appends here)
        self.died: list[weakref.ref[Any]] = []
        self.nwait = 0

    def _count(self) -> None:
        self.nwait = len(self.pending)
        self._core.nwait = self.nwait + len(self.resuming)

    def enqueue(self, w: QueuedWaiter, front: bool = False) -> weakref.ref[Any]:
        """Put w at the tail, or (the lone waiter adopted) at the head."""
        w.gone = False
        ref = w.ref = weakref.ref(w, self.died.append)
        if front:
            self.order.appendleft(ref)
        else:
            self.order.append(ref)
        self.pending.add(ref)
        self.gathered[ref] = w.got
        self._count()
        return ref

    def head(self) -> Any:
        """The oldest live waiter (the caller's Waiter type), or None (drops the gone and the dead
        in front of it)."""
        q = self.order
        w = q[0]() if q else None
        if w is None or w.gone:
            self.prune()
            w = q[0]() if q else None
        return w

    def prune(self) -> None:
        """Drop the gone and the dead from the head, so that the head is
        always live."""
        q = self.order
        while q:
            ref = q[0]
            w = ref()
            if w is not None and not w.gone:
                break
            q.popleft()
            if w is None and ref in self.pending:
                self.pending.discard(ref)  # its owner vanished mid-cleanup
                self.orphans += self.gathered.pop(ref, ())
                self._count()

    def sweep(self, scan: bool = False) -> list[Token]:
        """Forget waiters whose owner vanished and return the slots they had
        gathered (to be placed).  O(deaths since the last sweep); ``scan``
        also looks at every gathering waiter (statistics, close)."""
        self.prune()
        dead = self.died
        while dead:
            # Taken off the list only once handled: a signal handler raising
            # at a pop's return lost the waiter's death, and its gathered
            # tokens stayed in gathered, counted held, for good.  (By
            # identity: a weak reference's callback may append meanwhile.)
            ref = dead[-1]
            try:
                self.pending.discard(ref)
                self.resuming.discard(ref)
                self.orphans += self.gathered.pop(ref, ())
            except TypeError:
                pass  # never hashed while alive: it was never queued
            try:
                dead.remove(ref)
            except ValueError:
                pass
        if scan:
            # and a death lost some other way: a dead waiter's entry left
            for ref in [r for r in self.gathered if r() is None]:
                self.pending.discard(ref)
                self.resuming.discard(ref)
                self.orphans += self.gathered.pop(ref, ())
        self._count()
        orphans, self.orphans = self.orphans, []
        return orphans

    def unlink(self, w: QueuedWaiter) -> None:
        """Take w out of the queue in O(1): marked gone, dropped when it
        reaches the head."""
        if w.gone:
            return
        w.gone = True
        self.pending.discard(w.ref)
        self._count()
        self.prune()
        if w.state is not None:
            w.state.prune()

    def leave(self, w: QueuedWaiter) -> list[Token]:
        """w gives up (cancelled, timed out, failed): out of the queue and
        of the served ones; returns what it gathered, to be handed on."""
        self.unlink(w)
        if w.ref is not None:
            self.resuming.discard(w.ref)
            self.gathered.pop(w.ref, None)
            self._count()
        got, w.got = w.got, []
        w.done = False
        return got

    def resumed(self, w: QueuedWaiter) -> None:
        """w, served, runs again: the fast path need not defer to it."""
        if w.ref is not None:
            self.resuming.discard(w.ref)
            self.gathered.pop(w.ref, None)
            self._count()

    def live(self) -> list[Any]:
        """Every queued live waiter, oldest first (the caller's Waiter type)."""
        out = []
        for ref in self.order:
            w = ref()
            if w is not None and not w.gone:
                out.append(w)
        return out

    def serve(self, w: QueuedWaiter, tok: Token) -> bool:
        """Give tok to w, the live head: True when w now has all it needs
        (it is then out of the queue, served and not yet resumed).  (The
        hot path of every hand-off: the head is unlinked here.)"""
        got = w.got
        got.append(tok)
        if len(got) < w.need:
            return False
        w.done = True
        w.gone = True
        self.order.popleft()
        ref = w.ref
        self.pending.discard(ref)
        self.resuming.add(ref)  # type: ignore[arg-type]
        self._count()
        if w.state is not None:
            w.state.prune()
        return True

    def clear(self) -> None:
        """Forget every waiter (in a forked child: they are the parent's)."""
        self.order.clear()
        self.pending.clear()
        self.resuming.clear()
        self.gathered.clear()
        self.orphans.clear()
        self.died.clear()
        self._count()


if TYPE_CHECKING:
    WaiterQueue = PyWaiterQueue
else:
    # (a native core built before it had a queue: the pure one)
    WaiterQueue = getattr(_io._impl, "WaiterQueue", PyWaiterQueue) if _io.NATIVE else PyWaiterQueue
