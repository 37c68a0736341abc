"""A stress worker: joins the pool named in its environment and hammers it.

Run as a script by tests/stress/test_stress.py (and tests/test_killed.py):

    python worker.py SECONDS SEED [--hold]

For SECONDS it mixes sync cycles (try_acquire, acquire_blocking with a
timeout, double release, releases from another thread), threaded cycles and
async cycles (asyncio and trio, alternately) with random cancellations.  At
the end it checks it holds nothing and prints one JSON line of figures.

``--hold`` instead takes every token it can, prints "holding N" and sleeps
(a victim for SIGKILL).
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time

import anyio
import anyio.lowlevel

import fastjob


def sync_cycles(client: fastjob.Client, rng: random.Random, deadline: float) -> dict[str, int]:
    n = timeouts = doubles = 0
    while time.monotonic() < deadline:
        kind = rng.random()
        if kind < 0.4:
            tok = client.try_acquire()
            if tok is None:
                continue
        else:
            try:
                tok = client.acquire_blocking(timeout=rng.choice([0.0005, 0.002, 0.02]))
            except TimeoutError:
                timeouts += 1
                continue
        if rng.random() < 0.3:
            time.sleep(rng.random() * 0.0005)
        tok.release()
        if rng.random() < 0.1:
            tok.release()  # a second release must be a no-op
            doubles += 1
        n += 1
    return {"sync": n, "timeouts": timeouts, "double_releases": doubles}


async def async_cycles(
    client: fastjob.Client, rng: random.Random, deadline: float
) -> dict[str, int]:
    counts = {"async": 0, "cancelled": 0, "group_cancels": 0}

    async def one(delay: float | None, hold: float) -> None:
        with anyio.move_on_after(delay) as scope:
            async with client.token():
                counts["async"] += 1
                if hold:
                    await anyio.sleep(hold)
                else:
                    await anyio.lowlevel.checkpoint()
        if scope.cancelled_caught:
            counts["cancelled"] += 1

    while time.monotonic() < deadline:
        async with anyio.create_task_group() as tg:
            for _ in range(rng.randint(1, 12)):
                delay = rng.choice([None, None, 0, 0.0001, 0.001, 0.005])
                hold = rng.choice([0, 0, 0, 0.0002, 0.001])
                tg.start_soon(one, delay, hold)
            if rng.random() < 0.15:
                await anyio.sleep(rng.random() * 0.002)
                tg.cancel_scope.cancel()  # cancel everyone at a random moment
                counts["group_cancels"] += 1
    return counts


#: cycles each worker completes at least, however loaded the machine is
MIN_CYCLES = 1000


def run(seconds: float, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    client = fastjob.from_env(strict=True)
    assert client is not None, "worker started without a jobserver"
    figures: dict[str, int] = {}
    errors: list[BaseException] = []
    end = time.monotonic() + seconds

    def threaded(tseed: int) -> None:
        try:
            r = sync_cycles(client, random.Random(tseed), end)
            with lock:
                for k, v in r.items():
                    figures[k] = figures.get(k, 0) + v
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    lock = threading.Lock()
    threads = [threading.Thread(target=threaded, args=(seed * 10 + i,)) for i in range(2)]
    for th in threads:
        th.start()
    backends = ["asyncio", "trio"]
    i = 0

    def cycles() -> int:
        with lock:
            return figures.get("sync", 0) + figures.get("async", 0)

    # A loaded machine gets the same amount of stress, only slower: the main
    # loop goes on past `end` until MIN_CYCLES were done (bounded by `cap`).
    cap = end + 4 * seconds + 30
    while time.monotonic() < end or (cycles() < MIN_CYCLES and time.monotonic() < cap):
        slice_end = max(min(end, time.monotonic() + 0.2), time.monotonic() + 0.05)
        backend = backends[i % 2]
        i += 1
        r = anyio.run(async_cycles, client, rng, slice_end, backend=backend)
        with lock:
            for k, v in r.items():
                figures[k] = figures.get(k, 0) + v
        r2 = sync_cycles(client, rng, time.monotonic() + 0.05)
        with lock:
            for k, v in r2.items():
                figures[k] = figures.get(k, 0) + v
    for th in threads:
        th.join(30)
        assert not th.is_alive(), "a worker thread hung"
    if errors:
        raise errors[0]
    stats = client.statistics()
    assert stats.tokens_held == 0, f"worker ends holding {stats}"
    assert stats.tasks_waiting == 0, f"worker ends with waiters {stats}"
    figures["strategy"] = stats.wait_strategy  # type: ignore[assignment]
    client.close()
    return figures


def hold() -> None:
    client = fastjob.from_env(strict=True)
    assert client is not None
    held = []
    while True:
        tok = client.try_acquire()
        if tok is None:
            break
        held.append(tok)
    pool = sum(1 for t in held if not t.implicit)
    print(f"holding {pool}", flush=True)
    time.sleep(120)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--hold"]:
        hold()
    else:
        out = run(float(sys.argv[1]), int(sys.argv[2]))
        print(json.dumps(out), flush=True)
