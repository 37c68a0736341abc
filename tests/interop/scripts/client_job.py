"""A fastjob client run as a make recipe (or any jobserver child).

``client_job.py MODE N LOG OUT SECONDS``: join the pool with
``fastjob.from_env(strict=True)``, run N sub-jobs (each a real ``sleep``
subprocess) with at most one token each, and log every token holder's
``start``/``end`` to LOG.  MODE is ``sync`` (threads + acquire_blocking),
``asyncio`` or ``trio`` (client.token() + anyio.run_process).  Writes a JSON
report to OUT: fd flags of the shared pipe before/after, tokens taken from
the pool, tokens still held at the end, wait strategy.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from job import stamp  # noqa: E402

import fastjob  # noqa: E402


def shared_flags(auth: fastjob.JobserverAuth | None) -> list[int] | None:
    if auth is None or auth.style != "pipe":
        return None
    assert auth.read_fd is not None and auth.write_fd is not None
    return [fcntl.fcntl(fd, fcntl.F_GETFL) for fd in (auth.read_fd, auth.write_fd)]


def main() -> int:
    mode, n, log, out, seconds = sys.argv[1:6]
    count, secs = int(n), float(seconds)
    var = "CARGO_MAKEFLAGS" if os.environ.get("CARGO_MAKEFLAGS") else "MAKEFLAGS"
    auth = fastjob.parse_makeflags(os.environ.get(var, ""))
    before = shared_flags(auth)
    client = fastjob.from_env(strict=True)
    assert client is not None, "no jobserver in the environment"
    sleeper = [sys.executable, "-S", "-c", f"import time; time.sleep({secs})"]
    lock = threading.Lock()
    counts = {"pool_tokens": 0, "peak_held": 0}
    me = f"fj{os.getpid()}"

    def took(implicit: bool, i: int) -> None:
        stamp(log, "start", f"{me}-{i}")
        with lock:
            counts["pool_tokens"] += 0 if implicit else 1
            counts["peak_held"] = max(counts["peak_held"], client.statistics().tokens_held)

    if mode == "sync":

        def one(i: int) -> None:
            tok = client.acquire_blocking(timeout=60)
            try:
                took(tok.implicit, i)
                subprocess.run(sleeper, check=True)
                stamp(log, "end", f"{me}-{i}")
            finally:
                tok.release()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        import anyio

        async def one_async(i: int) -> None:
            async with client.token() as tok:
                took(tok.implicit, i)
                await anyio.run_process(sleeper)
                stamp(log, "end", f"{me}-{i}")

        async def run_all() -> None:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(count):
                        tg.start_soon(one_async, i)

        anyio.run(run_all, backend=mode)

    stats = client.statistics()
    report = dict(
        counts,
        held_at_end=stats.tokens_held,
        acquired=stats.tokens_acquired,
        strategy=stats.wait_strategy,
        style=client.style,
        flags_before=before,
        flags_after=shared_flags(auth),
    )
    client.close()
    with open(out, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
