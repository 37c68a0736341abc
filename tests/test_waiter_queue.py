"""WaiterQueue on its own: first come first served, weighted heads gather,
and no slot is ever lost, whatever order waiters queue, get served, give
up, resume or vanish in (a hypothesis state machine against a model)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fastjob import _io
from fastjob._core import queue as queue_mod

# Both twins, whichever core this run uses (the native one when it is built).
TWINS = [queue_mod.PyWaiterQueue]
if getattr(_io._impl, "WaiterQueue", None) is not None:
    TWINS.append(_io._impl.WaiterQueue)
elif _io.NATIVE:
    raise AssertionError("the native core has no WaiterQueue: rebuild it (pip install -e .)")
try:
    import _fastjob

    if _fastjob.WaiterQueue not in TWINS:
        TWINS.append(_fastjob.WaiterQueue)
except ImportError:
    pass


class FakeCore:
    nwait = 0


class FakeWaiter:
    __slots__ = ("need", "got", "done", "gone", "ref", "state", "__weakref__")

    def __init__(self, need: int) -> None:
        self.need = need
        self.got: list[object] = []
        self.done = False
        self.gone = True
        self.ref: weakref.ref[Any] | None = None
        self.state = None


class QueueMachine(RuleBasedStateMachine):
    twin: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.core = FakeCore()
        self.q = self.twin(self.core)
        self.queued: list[FakeWaiter] = []  # the model: live queued waiters, oldest first
        self.served: list[FakeWaiter] = []  # served, not resumed
        self.given = 0  # slots handed to the queue
        self.out = 0  # slots that left it: to a resumed waiter, handed back, or orphaned

    @rule(need=st.integers(1, 3), front=st.booleans())
    def add(self, need: int, front: bool) -> None:
        w = FakeWaiter(need)
        self.q.enqueue(w, front=front)
        if front:
            self.queued.insert(0, w)
        else:
            self.queued.append(w)

    @rule()
    def give(self) -> None:
        self.given += 1
        w = self.q.head()
        if not self.queued:
            assert w is None
            self.out += 1  # back to the pool
            return
        assert w is self.queued[0], "a slot went past the oldest waiter"
        if self.q.serve(w, object()):
            assert w.done and len(w.got) == w.need
            self.served.append(self.queued.pop(0))
        else:
            assert len(w.got) < w.need

    @precondition(lambda self: self.queued)
    @rule(i=st.integers(0, 50))
    def leave(self, i: int) -> None:
        w = self.queued.pop(i % len(self.queued))
        self.out += len(self.q.leave(w))
        assert w.got == [] and w.gone

    @precondition(lambda self: self.served)
    @rule(i=st.integers(0, 50))
    def resume(self, i: int) -> None:
        w = self.served.pop(i % len(self.served))
        self.q.resumed(w)
        self.out += len(w.got)

    @precondition(lambda self: self.queued or self.served)
    @rule(i=st.integers(0, 50), from_queue=st.booleans())
    def vanish(self, i: int, from_queue: bool) -> None:
        pool = self.queued if (from_queue and self.queued) or not self.served else self.served
        del pool[i % len(pool)]  # the last strong reference: its weak reference reports it
        gc.collect()

    @rule(scan=st.booleans())
    def sweep(self, scan: bool) -> None:
        self.out += len(self.q.sweep(scan))
        assert not self.q.died

    @invariant()
    def no_slot_lost(self) -> None:
        q = self.q
        live = sum(len(w.got) for w in self.queued + self.served)
        dead = sum(len(got) for ref, got in q.gathered.items() if ref() is None)
        assert self.given == self.out + live + dead + len(q.orphans)

    @invariant()
    def counts(self) -> None:
        q = self.q
        assert [w for w in q.live()] == self.queued
        live_pending = sum(1 for r in q.pending if r() is not None)
        assert live_pending == len(self.queued)
        assert self.core.nwait == q.nwait + len(q.resuming)
        if not q.died:
            assert q.nwait >= len(self.queued)


for _twin in TWINS:
    _machine = type(f"QueueMachine_{_twin.__module__}", (QueueMachine,), {"twin": _twin})
    _machine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
    globals()[f"TestWaiterQueue_{_twin.__module__.replace('.', '_')}"] = _machine.TestCase


def test_the_selected_twin_follows_the_core() -> None:
    native = getattr(_io._impl, "WaiterQueue", None)
    assert queue_mod.WaiterQueue is (native if _io.NATIVE else queue_mod.PyWaiterQueue)


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__module__)
def test_clear_forgets_everyone(twin: Any) -> None:
    core = FakeCore()
    q = twin(core)
    waiters = [FakeWaiter(2) for _ in range(3)]
    for w in waiters:
        q.enqueue(w)
    q.serve(waiters[0], object())
    assert core.nwait == 3
    q.clear()
    assert core.nwait == 0 and q.head() is None and q.live() == []


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__module__)
def test_dead_head_is_skipped_and_its_slots_come_back(twin: Any) -> None:
    core = FakeCore()
    q = twin(core)
    first, second = FakeWaiter(2), FakeWaiter(1)
    q.enqueue(first)
    q.enqueue(second)
    tok = object()
    assert not q.serve(first, tok)  # gathering: 1 of 2
    del first
    gc.collect()
    assert q.head() is second  # the dead head is dropped
    assert q.sweep() == [tok]  # and what it gathered comes back, once
    assert q.sweep() == []
    assert q.nwait == 1
