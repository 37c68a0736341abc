"""fastjob demo: a jobserver of 3 slots limits 12 real subprocesses, and a
child `make -j` joins the same budget.

Run: python examples/demo.py        (add --quiet for a one-line summary)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import anyio

import fastjob

JOBS = 3


def timeline(log: str, t0: float) -> tuple[int, list[str]]:
    """Peak overlap of the start/end stamps in log, and a text timeline."""
    events: list[tuple[float, int, str]] = []
    with open(log) as fh:
        for line in fh:
            kind, stamp, name = line.split()
            events.append((float(stamp), 1 if kind == "start" else -1, name))
    when: float
    events.sort(key=lambda e: (e[0], e[1]))
    running = peak = 0
    lines = []
    for when, delta, name in events:
        running += delta
        peak = max(peak, running)
        lines.append(f"  {when - t0:6.2f}s  {'start' if delta > 0 else 'end  '} {name:<8} running={running}")
    return peak, lines


async def main(quiet: bool) -> int:
    log = tempfile.mktemp(prefix="fastjob-demo-", suffix=".log")
    job = 'echo "start $(date +%s.%N) $0" >> "$1"; sleep 0.3; echo "end $(date +%s.%N) $0" >> "$1"'
    t0 = time.time()
    with fastjob.Server(jobs=JOBS) as server:
        print(f"pool: {server!r}; {server.available()} tokens in the pool + 1 implicit")
        # 1. twelve shell jobs, at most JOBS at a time: each JobGroup task
        #    holds one token while its subprocess runs
        async with fastjob.JobGroup(server.client) as group:
            for i in range(12):
                await group.spawn(anyio.run_process, ["sh", "-c", job, f"job{i}", log])
        peak_jobs, lines = timeline(log, t0)
        if not quiet:
            print("\n".join(lines))
        print(f"12 jobs under -j{JOBS}: at most {peak_jobs} ran at once")
        # 2. a child make with 8 targets shares the same pool: still at most JOBS at once
        make = shutil.which("make")
        peak_make = None
        if make:
            os.unlink(log)
            with tempfile.TemporaryDirectory() as d:
                mk = os.path.join(d, "Makefile")
                with open(mk, "w") as fh:
                    targets = " ".join(f"t{i}" for i in range(8))
                    fh.write(f"all: {targets}\n")
                    fh.write(f"{targets}:\n\t@sh -c '{job.replace('$', '$$')}' $@ {log}\n")
                # no -j here: a make given -jN starts a pool of its own
                await fastjob.run_process([make, "-s", "-f", mk], client=server.client)
            peak_make, _ = timeline(log, t0)
            print(f"child `make` (8 targets) inside the -j{JOBS} pool: at most {peak_make} recipes ran at once")
        os.unlink(log)
        print(f"tokens back in the pool: {server.available()} of {JOBS - 1}")
        ok = peak_jobs <= JOBS and (peak_make is None or peak_make <= JOBS)
        ok = ok and server.available() == JOBS - 1
    print("demo OK" if ok else "demo FAILED: the pool was exceeded or tokens are missing")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main, "--quiet" in sys.argv))
