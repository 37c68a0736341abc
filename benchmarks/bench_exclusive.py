"""Who wakes when one token is written: the kernel facts behind fastjob's wait paths.

1. Wake counts.  Four processes wait on one pipe; the harness writes 20
   tokens, 20 ms apart, and each process counts the times its wait returned
   (and reads a byte if one is there).  Three ways to wait:

   * ``loop``: an asyncio loop's ``add_reader`` on a private epoll fd that
     holds the pipe without EPOLLEXCLUSIVE;
   * ``loop+exclusive``: the same, with the pipe registered EPOLLEXCLUSIVE in
     that private epoll (a nested wait: the loop's epoll polls it);
   * ``thread+exclusive``: ``epoll_wait`` called directly on a private epoll
     holding the pipe with EPOLLEXCLUSIVE (what fastjob's thread leader does).

   Only the direct wait is exclusive: a nested epoll is woken like any other
   file, so every loop wakes (how many get as far as the callback depends on
   who reads first).

2. The floor for event loops: CPU per hand-off per extra waiting process
   with the cheapest non-exclusive design there is (a bare ``add_reader`` on
   a private O_NONBLOCK reopen, kept registered, whose callback reads), to
   compare with ``bench_async.py``'s herd line for fastjob.

    python bench_exclusive.py [--rounds 150] [--reps 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import statistics
import struct
import time


def wake_counts(mode: str, n: int = 4, tokens: int = 20) -> list[int]:
    r, w = os.pipe()
    res_r, res_w = os.pipe()
    kids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            fd = os.open(f"/proc/self/fd/{r}", os.O_RDONLY | os.O_NONBLOCK)
            ep = select.epoll()
            ep.register(fd, select.EPOLLIN | (select.EPOLLEXCLUSIVE if "exclusive" in mode else 0))
            wakes = [0]

            def take() -> None:
                try:
                    os.read(fd, 1)
                except BlockingIOError:
                    pass

            if mode == "thread+exclusive":
                end = time.monotonic() + 1.5
                while time.monotonic() < end:
                    if ep.poll(0.2):
                        wakes[0] += 1
                        take()
            else:

                async def main() -> None:
                    loop = asyncio.get_running_loop()

                    def ready() -> None:
                        wakes[0] += 1
                        ep.poll(0)
                        take()

                    loop.add_reader(ep.fileno(), ready)
                    await asyncio.sleep(1.5)

                asyncio.run(main())
            os.write(res_w, struct.pack("=i", wakes[0]))
            os._exit(0)
        kids.append(pid)
    time.sleep(0.3)
    for _ in range(tokens):
        os.write(w, b"+")
        time.sleep(0.02)
    counts = [struct.unpack("=i", os.read(res_r, 4))[0] for _ in kids]
    for pid in kids:
        os.waitpid(pid, 0)
    for fd in (r, w, res_r, res_w):
        os.close(fd)
    return sorted(counts)


def floor_herd(n: int, rounds: int, gap: float = 0.002) -> float:
    """CPU (ns, all waiting processes) per hand-off, bare add_reader waiters."""
    r, w = os.pipe()
    res_r, res_w = os.pipe()
    cpu_r, cpu_w = os.pipe()
    ctl = []
    kids = []
    for _ in range(n):
        cr, cw = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(cw)
            fd = os.open(f"/proc/self/fd/{r}", os.O_RDONLY | os.O_NONBLOCK)

            async def main() -> None:
                loop = asyncio.get_running_loop()

                def ready() -> None:
                    try:
                        os.read(fd, 1)
                    except BlockingIOError:
                        return
                    os.write(res_w, b"g")

                loop.add_reader(fd, ready)
                stop: asyncio.Future[int] = loop.create_future()
                c0 = [time.process_time_ns()]

                def control() -> None:
                    if os.read(cr, 1) == b"m":
                        c0[0] = time.process_time_ns()
                    else:
                        stop.set_result(time.process_time_ns() - c0[0])

                loop.add_reader(cr, control)
                os.write(res_w, b"r")
                os.write(cpu_w, struct.pack("=q", await stop))

            asyncio.run(main())
            os._exit(0)
        os.close(cr)
        ctl.append(cw)
        kids.append(pid)
    for _ in range(n):
        assert os.read(res_r, 1) == b"r"
    time.sleep(0.3)
    for cw in ctl:
        os.write(cw, b"m")
    time.sleep(0.05)
    for _ in range(rounds):
        os.write(w, b"+")
        assert os.read(res_r, 1) == b"g"
        time.sleep(gap)
    for cw in ctl:
        os.write(cw, b"q")
    total = sum(struct.unpack("=q", os.read(cpu_r, 8))[0] for _ in kids)
    for pid in kids:
        os.waitpid(pid, 0)
    for fd in (r, w, res_r, res_w, cpu_r, cpu_w, *ctl):
        os.close(fd)
    return total / rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=150)
    ap.add_argument("--reps", type=int, default=4)
    a = ap.parse_args()
    print("wake counts per process, 4 processes, 20 tokens:")
    for mode in ("loop", "loop+exclusive", "thread+exclusive"):
        print(f"  {mode:18s} {wake_counts(mode)}")
    per: dict[int, list[float]] = {1: [], 4: []}
    for rep in range(a.reps):
        for k in (1, 4) if rep % 2 == 0 else (4, 1):
            per[k].append(floor_herd(k, a.rounds))
    m1, m4 = statistics.median(per[1]), statistics.median(per[4])
    print(
        f"floor, bare add_reader waiters: CPU per hand-off {m1 / 1000:.1f} µs with 1 waiting process, "
        f"{m4 / 1000:.1f} µs with 4: {(m4 - m1) / 3 / 1000:.1f} µs per extra waiting process"
    )


if __name__ == "__main__":
    main()
