"""The waiter queue's share of one wait (a waiter queued, found at the head,
served, resumed) on the native ``_fastjob.WaiterQueue`` and its pure twin
``PyWaiterQueue``, alternated in one process: medians of 9 rounds, each the
best of 3 batches of 20,000 (the Waiter's own creation included).

    python benchmarks/bench_queue.py
"""

from __future__ import annotations

import statistics
import timeit
from typing import Any, Callable

import _fastjob

from fastjob._core.queue import PyWaiterQueue
from fastjob._waiting import Waiter


class _Counts:
    nwait = 0


def one_wait(q: Any) -> Callable[[], None]:
    def run() -> None:
        w = Waiter(1)
        q.enqueue(w)
        q.serve(q.head(), None)
        q.resumed(w)

    return run


def main() -> None:
    twins = {"native": _fastjob.WaiterQueue, "pure": PyWaiterQueue}
    ns: dict[str, list[float]] = {name: [] for name in twins}
    for _ in range(9):
        for name, cls in twins.items():
            run = one_wait(cls(_Counts()))
            ns[name].append(min(timeit.repeat(run, number=20_000, repeat=3)) / 20_000 * 1e9)
    med = {name: statistics.median(v) for name, v in ns.items()}
    for name, v in med.items():
        print(f"{name:6} {v:6.0f} ns per wait  {v / med['pure']:.2f}x the pure twin")


if __name__ == "__main__":
    main()
