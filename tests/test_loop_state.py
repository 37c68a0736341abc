"""LoopState.first: the oldest live waiter of a loop, found from the head
of its queue (copied in part, not whole), whatever lies before it: waiters
that left, waiters whose weak reference is dead, and the one skipped.
Then on a real loop: a head of cancelled waiters longer than the part
copied still leaves the lead, and every token, to the oldest live one."""

from __future__ import annotations

import weakref
from typing import Any

import anyio
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import fastjob
from fastjob import _waiting
from fastjob._waiting import LoopState, Waiter

from conftest import asyncio_loops, run_on_loop

# what lies in the queue: a live waiter, one that left, one that died
KINDS = st.sampled_from(["live", "gone", "dead"])


def _queue_of(kinds: list[str]) -> tuple[LoopState, list[Any]]:
    state = LoopState()
    keep: list[Any] = []  # what the test holds (the dead are not held)
    for kind in kinds:
        w = Waiter(1)
        w.gone = kind == "gone"
        state.queue.append(weakref.ref(w))
        keep.append(w if kind != "dead" else None)
    return state, keep


@given(
    st.lists(st.sampled_from(["gone", "dead"]), max_size=3 * _waiting._HEAD),
    st.lists(KINDS, max_size=2 * _waiting._HEAD),
    st.data(),
)
@example(["gone"] * _waiting._HEAD + ["dead"], ["live"], None)
def test_first_is_the_oldest_live_waiter_not_skipped(
    head: list[str], rest: list[str], data: st.DataObject | None
) -> None:
    """(head: a run of the left and the dead, as many as a mass
    cancellation leaves, before and past the part copied first)"""
    kinds = head + rest
    state, keep = _queue_of(kinds)
    live = [w for w, k in zip(keep, kinds) if k == "live"]
    skip = data.draw(st.sampled_from([None, *live])) if live and data is not None else None
    want = next((w for w in live if w is not skip), None)
    assert state.first(skip=skip) is want
    assert state.first() is (live[0] if live else None)


@pytest.mark.parametrize("loop", [*asyncio_loops(), "trio"])
def test_a_cancelled_head_longer_than_the_copied_part_leaves_the_lead_on(loop: str) -> None:
    """3 * _HEAD waiters queue, the first 2 * _HEAD are cancelled; the
    tokens released then reach the others, in the order they queued."""
    n_gone = 2 * _waiting._HEAD
    n_live = _waiting._HEAD

    async def main() -> None:
        with fastjob.Server(jobs=2) as server:
            client = server.client
            held = [client.try_acquire(), client.try_acquire()]
            assert all(t is not None for t in held)
            order: list[int] = []
            scopes: list[anyio.CancelScope] = []

            async def waiter(i: int, scope: anyio.CancelScope) -> None:
                with scope:
                    tok = await client.acquire()
                    order.append(i)
                    tok.release()

            async with anyio.create_task_group() as tg:
                for i in range(n_gone + n_live):
                    scope = anyio.CancelScope()
                    scopes.append(scope)
                    tg.start_soon(waiter, i, scope)
                    while client.statistics().tasks_waiting < i + 1:
                        await anyio.sleep(0)
                for scope in scopes[:n_gone]:
                    scope.cancel()
                for _ in range(5):
                    await anyio.sleep(0)
                for t in held:
                    t.release()  # type: ignore[union-attr]
            assert order == list(range(n_gone, n_gone + n_live))
            assert server.available() == 1

    if loop == "trio":
        anyio.run(main, backend="trio")
    else:
        run_on_loop(loop, main())
