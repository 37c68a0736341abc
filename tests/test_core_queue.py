"""The waiter queue: a waiter whose owner vanished (its cleanup interrupted,
e.g. by a signal handler's exception) is found through its weak
reference's death notice, not by scanning every queued waiter, and the
slots it gathered go on."""

from __future__ import annotations

import gc

import fastjob
from fastjob import _waiting


def _queue_waiters(c: fastjob.Client, n: int, need: int = 1) -> list[_waiting.Waiter]:
    out = [_waiting.Waiter(need) for _ in range(n)]
    for x in out:
        assert not c._register(x)  # queued (not served at once)
    return out


def test_a_vanished_waiter_hands_its_slots_on() -> None:
    with fastjob.Server(3) as s:
        c = s.client
        implicit = c.try_acquire()
        assert implicit is not None and implicit.implicit
        waiters = _queue_waiters(c, 1, need=3)  # gathers the 2 pool bytes, waits for 1 more
        assert len(waiters[0].got) == 2 and not waiters[0].done
        assert c.statistics().tasks_waiting == 1
        del waiters[:]  # its owner vanishes without leaving the queue
        st = c.statistics()
        assert st.tasks_waiting == 0 and st.tokens_held == 1  # the implicit one, ours
        assert s.available() == 2  # its two bytes went back
        implicit.release()


def test_many_vanished_waiters_are_all_swept() -> None:
    with fastjob.Server(2) as s:
        c = s.client
        hold = [c.try_acquire(), c.try_acquire()]  # implicit + the pool's byte
        waiters = _queue_waiters(c, 500)
        assert c.statistics().tasks_waiting == 500
        del waiters[::2]
        assert c.statistics().tasks_waiting == 250
        hold[0].release()  # the implicit token: to the oldest live waiter
        head = waiters[0]
        assert head.done and head.got[0].implicit
        c._resumed(head)
        head.got.pop().release()  # handed on to the next live waiter
        assert waiters[1].done and waiters[1].got[0].implicit
        del waiters[:]  # served-not-resumed and queued waiters vanish
        st = c.statistics()
        assert st.tasks_waiting == 0 and not st.implicit_held  # the implicit came back
        hold[1].release()
        assert s.available() == 1
        gc.collect()
