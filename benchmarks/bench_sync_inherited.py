"""Sync pool-token cycle of a client of *inherited* fds against the Server's
own client, both against a raw ``os.read`` + ``os.write`` pair on the same
pipe, in one process (run it once as is and once with
``FASTJOB_NO_EXTENSIONS=1`` for the pure core).

A Server's own client writes through a private O_NONBLOCK description of the
write end (a plain ``write(2)``); a client of inherited fds (``from_env``,
what a tool under make gets) writes to the shared end with
``pwritev2(RWF_NOWAIT)``, because a writer of its own would keep a dead pool
from reaching EOF.  Medians of 11 alternated rounds (each the best of 3
batches of 50,000 cycles).

    python benchmarks/bench_sync_inherited.py
"""

from __future__ import annotations

import os
import statistics
import timeit

import fastjob


def main() -> None:
    server = fastjob.Server(jobs=3)
    inherited = fastjob.from_env(environ=server.env(), strict=True)
    assert inherited is not None
    r, w = server.pass_fds
    take_inherited = inherited.try_acquire
    take_server = server.client.try_acquire
    implicit = take_server()  # held: every cycle below reads the pipe

    def raw() -> None:
        os.write(w, os.read(r, 1))

    def inherited_cycle() -> None:
        take_inherited().release()  # type: ignore[union-attr]

    def server_cycle() -> None:
        take_server().release()  # type: ignore[union-attr]

    cases = {"raw pair": raw, "inherited fds": inherited_cycle, "Server's client": server_cycle}
    ns: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(11):
        for name, fn in cases.items():
            ns[name].append(min(timeit.repeat(fn, number=50_000, repeat=3)) / 50_000 * 1e9)
    med = {name: statistics.median(v) for name, v in ns.items()}
    core = "native" if fastjob.NATIVE else "pure"
    for name, v in med.items():
        print(f"{core:6} {name:16} {v:7.0f} ns  {v / med['raw pair']:.2f}x the raw pair")
    assert implicit is not None
    implicit.release()
    inherited.close()
    server.close()


if __name__ == "__main__":
    main()
